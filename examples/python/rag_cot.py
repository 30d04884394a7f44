"""Answers a question from documents, then with chain of thought, through the qllm Python package
(pip install ./python).

    python3 rag_cot.py MODEL DB QUESTION [DOCS...]

Indexes DOCS (files or directories of .txt/.md) into the SQLite database DB, answers QUESTION
from the best chunks that fit the window (and says which chunks were left out and why), then
answers it again reasoning step by step first. Greedy decoding, as `qllm rag ask --temp 0`.
"""
import sys

import qllm


def main(argv):
    if len(argv) < 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    model_path, db, question, docs = argv[1], argv[2], argv[3], argv[4:]
    with qllm.Model(model_path) as model, qllm.Rag(db, create=True) as rag:
        if docs:
            counts = rag.index(model, docs)
            print("indexed: {files_added} added, {files_changed} changed, {files_unchanged} unchanged, "
                  "{files_removed} removed, {files_skipped} skipped".format(**counts), file=sys.stderr)
        session = model.session(temperature=0)

        a = rag.ask(session, question, top_k=4, max_tokens=48)
        print("answer:", a["answer"].lstrip(" "))
        for u in a["report"]["used"]:
            print(f"  source [{u['n']}] chunk {u['chunk_id']}: {u['path']}#{u['seq']} ({u['tokens']} tokens)")
        for d in a["report"]["dropped"]:
            print(f"  left out: rank {d['rank']}, chunk {d['chunk_id']}: {d['reason']}", file=sys.stderr)

        c = rag.ask(session, question, top_k=4, max_tokens=48, cot=True, answer_tokens=24)
        print("reasoning:", c["reasoning"].strip(), file=sys.stderr)
        print("answer after reasoning:", c["answer"].lstrip(" "))

        # chain of thought on a plain prompt, without retrieval
        p = session.generate_cot("And Moses said unto the people,", max_tokens=24, answer_tokens=8)
        print("plain reasoning:", p["reasoning"].strip(), file=sys.stderr)
        print("plain answer:", p["answer"].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
