"""Tests of the qllm Python package (run with pytest against the installed package). Needs
QLLM_TEST_MODEL (a GGUF with a vocabulary) and QLLM_TEST_EXPECTED (a file with `qllm run`'s greedy
completion of PROMPT, MAX_TOKENS tokens, prompt echo removed); tests/bindings/run_python.sh
prepares both, installs the package into a new virtual environment (QLLM_TEST_VENV) and runs this
file from outside the source tree."""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import qllm

MODEL = os.environ["QLLM_TEST_MODEL"]
PROMPT = "Once upon a time"
MAX_TOKENS = 24


def ascii_stop(text):
    """Three ASCII characters of text after its start: a stop string that is certainly there."""
    at = next(i for i in range(3, len(text) - 3) if text[i:i + 3].isascii())
    return text[at:at + 3]


class ModelTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = qllm.Model(MODEL)

    def test_version(self):
        self.assertRegex(qllm.version(), r"^0\.\d+\.\d+$")

    def test_info(self):
        info = self.model.info
        self.assertEqual(info["n_embd"], 64)
        self.assertEqual(info["n_vocab"], 512)
        self.assertEqual(info["has_vocabulary"], 1)
        self.assertEqual(info["bos_token"], 1)
        self.assertEqual(info["weight_type_name"], "q4_0")
        self.assertRegex(info["weight_mix"], r"^Q4_0: \d+ q4_0, \d+ f32$")
        self.assertTrue(info["isa"])

    def test_tokenize_round_trip(self):
        ids = self.model.tokenize("the quick brown fox")
        self.assertEqual(ids[0], 1)
        self.assertEqual(self.model.count_tokens("the quick brown fox"), len(ids))
        self.assertEqual(self.model.tokenize("the quick brown fox", add_bos=False), ids[1:])
        self.assertEqual(self.model.detokenize(ids), "the quick brown fox")
        self.assertEqual(self.model.token_piece(1), "<s>")
        long_text = "abc " * 500  # more than the first buffer: the needed-size retry
        self.assertEqual(self.model.detokenize(self.model.tokenize(long_text)), long_text)

    def test_errors_carry_status_and_message(self):
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Model("/nonexistent/model.gguf")
        self.assertEqual(e.exception.name, "QLLM_ERR_IO")
        self.assertIn("/nonexistent/model.gguf", e.exception.message)
        with self.assertRaises(qllm.QllmError) as e:
            self.model.tokenize(b"bad \xff utf-8")
        self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")
        self.assertIn("UTF-8", e.exception.message)
        with self.assertRaises(qllm.QllmError) as e:
            self.model.detokenize([1, 10 ** 6])
        self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")
        with self.assertRaises(qllm.QllmError) as e:
            self.model.session(top_p=3.0)
        self.assertIn("top_p", e.exception.message)
        with self.assertRaises(TypeError):
            self.model.session(no_such_parameter=1)

    def test_chat(self):
        dialog = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "How are you?")]
        ids = self.model.chat_tokens(dialog)
        self.assertEqual(ids[0], 1)
        self.assertEqual(ids.count(2), 1)  # one finished exchange, one EOS
        self.assertEqual(qllm.chat_format(dialog),
                         "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] How are you? [/INST]")
        with self.assertRaises(qllm.QllmError):
            self.model.chat_tokens([("assistant", "x")])
        # the model's own format is Llama-2's here; </s> and <s> parsed give the chat's ids
        text = self.model.chat_format(dialog)
        self.assertEqual(text, qllm.chat_format(dialog))
        self.assertEqual(self.model.tokenize(text, add_bos=False, parse_special=True), ids)
        self.assertEqual(self.model.info["tokenizer"], "sentencepiece")
        self.assertEqual(self.model.info["chat_format"], "llama2")
        self.assertEqual(self.model.end_tokens, [2])


@unittest.skipUnless(os.environ.get("QLLM_TEST_L3_MODEL"), "QLLM_TEST_L3_MODEL (a Llama-3-shaped model) not given")
class Llama3Test(unittest.TestCase):
    """A Llama-3-shaped model with a byte-level BPE vocabulary: special pieces on request, the
    end tokens, the Llama-3 chat format."""

    @classmethod
    def setUpClass(cls):
        cls.model = qllm.Model(os.environ["QLLM_TEST_L3_MODEL"])

    def piece_id(self, piece):
        return next(i for i in range(self.model.info["n_vocab"]) if self.model.token_piece(i) == piece)

    def test_info(self):
        info = self.model.info
        self.assertEqual(info["tokenizer"], "llama3-bpe")
        self.assertEqual(info["chat_format"], "llama3")
        self.assertEqual(self.model.token_piece(info["bos_token"]), "<|begin_of_text|>")

    def test_parse_special(self):
        eot = self.piece_id("<|eot_id|>")
        plain = self.model.tokenize("hi<|eot_id|>there", add_bos=False)
        special = self.model.tokenize("hi<|eot_id|>there", add_bos=False, parse_special=True)
        self.assertNotIn(eot, plain)
        self.assertEqual(special.count(eot), 1)
        self.assertEqual(self.model.detokenize(plain), "hi<|eot_id|>there")
        i = special.index(eot)
        self.assertEqual(special[:i], self.model.tokenize("hi", add_bos=False))
        self.assertEqual(special[i + 1:], self.model.tokenize("there", add_bos=False))

    def test_end_tokens(self):
        ends = self.model.end_tokens
        self.assertEqual(ends, sorted(ends))
        self.assertEqual({self.model.token_piece(t) for t in ends}, {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"})

    def test_chat_format(self):
        dialog = [("system", "Be brief."), ("user", "hi"), ("assistant", "yo"), ("user", "and?")]
        text = self.model.chat_format(dialog)
        self.assertEqual(text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                               "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\nyo<|eot_id|>"
                               "<|start_header_id|>user<|end_header_id|>\n\nand?<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\n")
        self.assertEqual(self.model.tokenize(text, add_bos=False, parse_special=True), self.model.chat_tokens(dialog))
        # the model-free function is Llama-2's layout
        self.assertTrue(qllm.chat_format(dialog).startswith("<s>[INST]"))


class SessionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = qllm.Model(MODEL)
        with open(os.environ["QLLM_TEST_EXPECTED"], encoding="utf-8") as f:
            cls.expected = f.read()

    def test_greedy_text_equals_the_cpp_path(self):
        s = self.model.session(temperature=0, n_ctx=256)
        text = s.generate(PROMPT, max_tokens=MAX_TOKENS, stop_at_eos=False)
        self.assertEqual(text, self.expected)
        r = s.last_result
        self.assertEqual(r["n_generated"], MAX_TOKENS)
        self.assertEqual(r["finish_reason"], "max-tokens")
        self.assertEqual(r["n_prompt_tokens"], len(self.model.tokenize(PROMPT)))

    def test_speculation_gives_the_same_text(self):
        plain = self.model.session(temperature=0, n_ctx=256)
        # a prompt that repeats, so that lookup finds drafts
        prompt = "A cat sat on a mat. A cat sat on a mat. A cat"
        want = plain.generate(prompt, max_tokens=MAX_TOKENS, stop_at_eos=False)
        s = self.model.session(temperature=0, n_ctx=256)
        s.set_speculation("lookup", draft_tokens=4)
        self.assertEqual(s.generate(prompt, max_tokens=MAX_TOKENS, stop_at_eos=False), want)
        self.assertGreater(s.last_result["n_drafted"], 0)
        # the model drafting for itself keeps every draft, streamed too
        s.set_speculation("draft", draft=qllm.Model(MODEL))
        s.reset()
        self.assertEqual("".join(s.stream(prompt, max_tokens=MAX_TOKENS, stop_at_eos=False)), want)
        r = s.last_result
        self.assertGreater(r["n_drafted"], 0)
        self.assertEqual(r["n_draft_accepted"], r["n_drafted"])
        s.set_speculation(None)
        self.assertIsNone(s.draft)
        self.assertEqual(s.generate(prompt, max_tokens=MAX_TOKENS, stop_at_eos=False), want)
        self.assertEqual(s.last_result["n_drafted"], 0)
        for bad in (lambda: s.set_speculation("draft"), lambda: s.set_speculation("lookup", draft_tokens=0),
                    lambda: s.set_speculation("other")):
            with self.assertRaises(qllm.QllmError) as e:
                bad()
            self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")

    def test_stream_yields_the_same_text(self):
        s = self.model.session(temperature=0, n_ctx=256)
        pieces = list(s.stream(PROMPT, max_tokens=MAX_TOKENS, stop_at_eos=False))
        self.assertGreater(len(pieces), 3)
        self.assertEqual("".join(pieces), self.expected)

    def test_closing_the_stream_cancels(self):
        s = self.model.session(temperature=0, n_ctx=256)
        g = s.stream(PROMPT, max_tokens=200, stop_at_eos=False)
        next(g)
        g.close()
        self.assertEqual(s.last_result["finish_reason"], "cancelled")
        self.assertLess(s.last_result["n_generated"], 200)

    def test_busy_while_streaming_and_close_waits(self):
        s = self.model.session(temperature=0, n_ctx=256)
        g = s.stream(PROMPT, max_tokens=200, stop_at_eos=False)
        next(g)
        with self.assertRaises(qllm.QllmError) as e:
            s.history
        self.assertIn("busy", e.exception.message)
        with self.assertRaises(qllm.QllmError):
            next(s.stream(PROMPT))
        s.close()  # cancels and joins the generation before freeing
        with self.assertRaises(qllm.QllmError):
            s.history
        g.close()

    def test_single_stop_string(self):
        s = self.model.session(temperature=0, n_ctx=256)
        stop = ascii_stop(self.expected)
        self.assertEqual(s.generate(PROMPT, max_tokens=MAX_TOKENS, stop=stop, stop_at_eos=False),
                         self.expected[:self.expected.find(stop)])

    def test_exception_in_callback_cancels_and_propagates(self):
        s = self.model.session(temperature=0, n_ctx=256)

        def boom(_data, _token):
            raise ValueError("from the callback")

        with self.assertRaises(ValueError):
            s._run(PROMPT, 50, (), False, boom)
        self.assertEqual(s.generate(PROMPT, max_tokens=MAX_TOKENS, stop_at_eos=False), self.expected)

    def test_stop_string(self):
        s = self.model.session(temperature=0, n_ctx=256)
        stop = ascii_stop(self.expected)
        text = s.generate(PROMPT, max_tokens=MAX_TOKENS, stop=[stop], stop_at_eos=False)
        self.assertEqual(text, self.expected[:self.expected.find(stop)])
        self.assertEqual(s.last_result["finish_reason"], "stop-string")

    def test_cancel_from_another_thread_stops_the_prompt(self):
        s = self.model.session(temperature=0, n_ctx=1024, n_batch=1, n_threads=1)
        ids = [1] + [3 + (i * 17) % 400 for i in range(1000)]
        done = threading.Event()

        def pester():
            while not done.is_set():
                s.cancel()
                time.sleep(0.001)

        t = threading.Thread(target=pester)
        t.start()
        try:
            text = s.generate(ids, max_tokens=4)
        finally:
            done.set()
            t.join()
        self.assertEqual(text, "")
        self.assertEqual(s.last_result["finish_reason"], "cancelled")
        self.assertEqual(s.history, [])

    def test_eval_logits_sample(self):
        s = self.model.session(temperature=0, n_ctx=256)
        ids = self.model.tokenize(PROMPT)
        s.eval(ids)
        logits = s.logits()
        self.assertEqual(len(logits), 512)
        best = max(range(len(logits)), key=lambda i: (logits[i], -i))
        self.assertEqual(s.sample(), best)
        self.assertEqual(s.history, ids)
        # eval appends; one greedy token from generate() starts the expected text
        s.eval([best])
        self.assertEqual(s.history, ids + [best])
        one = self.model.session(temperature=0, n_ctx=256).generate(ids, max_tokens=1, stop_at_eos=False)
        self.assertTrue(self.expected.startswith(one))

    def test_same_seed_same_text(self):
        a = self.model.session(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42, n_ctx=256)
        b = self.model.session(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42, n_ctx=256, n_threads=1)
        ta = a.generate("abc", max_tokens=20, stop_at_eos=False)
        tb = b.generate("abc", max_tokens=20, stop_at_eos=False)
        self.assertEqual(ta, tb)

    def test_set_sampling(self):
        s = self.model.session(temperature=1.5, n_ctx=256)
        s.set_sampling(temperature=0)
        self.assertEqual(s.generate(PROMPT, max_tokens=MAX_TOKENS, stop_at_eos=False), self.expected)
        with self.assertRaises(qllm.QllmError) as e:
            s.set_sampling(top_p=0)
        self.assertIn("top_p", e.exception.message)

    def test_context_policy(self):
        long_prompt = "word " * 200
        s = self.model.session(temperature=0, n_ctx=64)
        with self.assertRaises(qllm.QllmError) as e:
            s.generate(long_prompt, max_tokens=8)
        self.assertEqual(e.exception.name, "QLLM_ERR_CONTEXT_OVERFLOW")
        self.assertIn("too many", e.exception.message)
        s = self.model.session(temperature=0, n_ctx=64, context_policy="keep-head-and-tail", n_keep=4)
        s.generate(long_prompt, max_tokens=8)
        r = s.last_result
        self.assertEqual(r["n_dropped"], r["n_sequence_tokens"] - (64 - 8))
        self.assertEqual(r["drop_begin"], 4)

    @unittest.skipUnless(os.environ.get("QLLM_CLI"), "QLLM_CLI (the qllm tool) not given")
    def test_perplexity_tool_equals_logits_from_this_binding(self):
        # `qllm perplexity -c 64` scores positions 32..62 of the first window (BOS first) from one
        # batched pass; here the same from token-by-token logits (bit-identical by design)
        text = "the quick brown fox jumps over the lazy dog and runs far away " * 8
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(text)
        try:
            out = subprocess.run([os.environ["QLLM_CLI"], "perplexity", "-m", MODEL, "-f", f.name, "-c", "64",
                                  "--chunks", "1"], capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
        ppl_tool = float(re.search(r"PPL = ([0-9.]+)", out).group(1))
        w = self.model.tokenize(text)[:64]
        self.assertEqual(len(w), 64)
        w[0] = 1
        s = self.model.session(n_ctx=64)
        nll = 0.0
        for i in range(63):
            s.eval([w[i]])
            if i >= 32:
                logits = s.logits()
                mx = max(logits)
                lse = mx + math.log(sum(math.exp(x - mx) for x in logits))
                nll -= logits[w[i + 1]] - lse
        ppl = math.exp(nll / 31)
        self.assertAlmostEqual(ppl_tool / ppl, 1.0, places=5)

    def test_embeddings(self):
        s = self.model.session(n_ctx=256)
        a = [float(x) for x in s.embed("the cat sat")]
        self.assertEqual(len(a), 64)
        self.assertAlmostEqual(math.sqrt(sum(x * x for x in a)), 1.0, places=5)
        self.assertEqual([float(x) for x in s.embed("the cat sat")], a)
        b = [float(x) for x in s.embed("completely different words here")]
        self.assertLess(sum(x * y for x, y in zip(a, b)), 0.9999)

    def test_embedding_types(self):
        # a NumPy float32 array when NumPy is there, a list of floats when it is not
        s = self.model.session(n_ctx=256)
        try:
            import numpy
        except ImportError:
            numpy = None
        e = s.embed("the cat sat")
        if numpy is not None:
            self.assertIsInstance(e, numpy.ndarray)
            self.assertEqual((e.dtype, e.shape), (numpy.float32, (64,)))
        saved = sys.modules.get("numpy")
        sys.modules["numpy"] = None  # import numpy now raises ImportError
        try:
            plain = s.embed("the cat sat")
        finally:
            if saved is None:
                del sys.modules["numpy"]
            else:
                sys.modules["numpy"] = saved
        self.assertIsInstance(plain, list)
        self.assertEqual(plain, [float(x) for x in e])

    def test_chat_equals_the_template_run(self):
        dialog = [("system", "Be brief."), ("user", "Tell me a story.")]
        s = self.model.session(temperature=0, n_ctx=256)
        answer = s.chat(dialog, max_tokens=12)
        ids = self.model.chat_tokens(dialog)
        t = self.model.session(temperature=0, n_ctx=256)
        self.assertEqual(answer, t.generate(ids, max_tokens=12).lstrip(" "))
        u = self.model.session(temperature=0, n_ctx=256)
        self.assertEqual("".join(u.chat_stream(dialog, max_tokens=12)), answer)
        self.assertEqual(s.last_result["n_generated"], 12)

    def test_sessions_on_threads_share_the_model(self):
        out = [None] * 3

        def work(i):
            s = self.model.session(temperature=0, n_ctx=256, n_threads=1)
            out[i] = s.generate(PROMPT, max_tokens=MAX_TOKENS, stop_at_eos=False)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(out, [self.expected] * 3)


SHIPPED = os.environ.get("QLLM_SHIPPED_MODEL", "")
LICENSES = "/usr/share/common-licenses"


@unittest.skipUnless(SHIPPED, "QLLM_SHIPPED_MODEL is not set")
class RagTest(unittest.TestCase):
    """Retrieval and chain of thought against the qllm tool (the C++ core) on the shipped model."""

    @classmethod
    def setUpClass(cls):
        cls.model = qllm.Model(SHIPPED)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.docs = os.path.join(cls.tmp.name, "docs")
        os.mkdir(cls.docs)
        for name in ("GPL-3", "Apache-2.0", "BSD"):
            with open(os.path.join(LICENSES, name), encoding="utf-8") as f, \
                    open(os.path.join(cls.docs, name + ".txt"), "w", encoding="utf-8") as g:
                g.write(f.read())
        cls.db = os.path.join(cls.tmp.name, "r.db")

    @classmethod
    def tearDownClass(cls):
        cls.model.close()
        cls.tmp.cleanup()

    def tool(self, *args):
        r = subprocess.run([os.environ["QLLM_CLI"], *args], capture_output=True, text=True, check=True)
        return r.stdout, r.stderr

    def test_index_ask_report_equal_the_tool(self):
        with qllm.Rag(self.db, create=True) as rag:
            first = rag.index(self.model, [self.docs], chunk_tokens=128, overlap_tokens=16)
            again = rag.index(self.model, self.docs, chunk_tokens=128, overlap_tokens=16)
            self.assertEqual(first["files_added"] + first["files_unchanged"], 3)
            self.assertEqual(again["files_unchanged"], 3)
            self.assertEqual(again["chunks_added"], 0)
            q = "What may each contributor grant under the patent license?"
            s = self.model.session(temperature=0)
            a = rag.ask(s, q, top_k=4, max_tokens=32)
            report = a["report"]
            self.assertEqual(len(report["used"]) + len(report["dropped"]), 4)
            self.assertGreater(len(report["used"]), 0)
            self.assertEqual([u["n"] for u in report["used"]], list(range(1, len(report["used"]) + 1)))
            self.assertLessEqual(report["prompt_tokens"] + report["reserved"], report["window"])
            for d in report["dropped"]:
                self.assertTrue(d["reason"])
            out, err = self.tool("rag", "ask", "--db", self.db, "-m", SHIPPED, "--temp", "0", "-n", "32", "-k", "4",
                                 "-q", q)
            self.assertEqual(a["answer"].lstrip(" "), out.split("\nsources:")[0])
            for u in report["used"]:
                self.assertIn(f"chunk {u['chunk_id']}: {u['path']}#{u['seq']}", out)
            self.assertEqual(a["reasoning"], "")

            pieces, thoughts = [], []
            c = rag.ask(s, q, top_k=4, max_tokens=32, cot=True, answer_tokens=12, on_text=pieces.append,
                        on_reasoning=thoughts.append)
            self.assertEqual("".join(pieces), c["answer"])
            self.assertEqual("".join(thoughts), c["reasoning"])
            self.assertTrue(c["reasoning"])
            out, err = self.tool("rag", "ask", "--db", self.db, "-m", SHIPPED, "--temp", "0", "-n", "32", "-k", "4",
                                 "--cot", "--cot-answer-tokens", "12", "-q", q)
            self.assertEqual(c["answer"].lstrip(" "), out.split("\nsources:")[0])
            self.assertIn(c["reasoning"].lstrip(" "), err)

    def test_chain_of_thought_equals_the_tool(self):
        s = self.model.session(temperature=0)
        r = s.generate_cot("And Moses said unto the people,", max_tokens=24, answer_tokens=8)
        out, err = self.tool("run", "-m", SHIPPED, "--temp", "0", "-n", "24", "--cot", "--cot-answer-tokens", "8",
                             "-q", "-p", "And Moses said unto the people,")
        self.assertEqual(r["answer"].lstrip(" ") + "\n", out)
        self.assertIn("[reasoning]\n" + r["reasoning"].lstrip(" ") + "\n[end of reasoning]", err)
        c = s.chat_cot([{"role": "user", "content": "Who led the people out of Egypt?"}], max_tokens=24,
                       answer_tokens=8)
        self.assertTrue(c["reasoning"])
        self.assertNotIn(c["reasoning"], c["answer"])

    def test_bad_databases_raise(self):
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Rag(os.path.join(self.tmp.name, "missing.db"))
        self.assertEqual(e.exception.name, "QLLM_ERR_IO")
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Rag(SHIPPED)
        self.assertEqual(e.exception.name, "QLLM_ERR_BAD_FORMAT")
        rag = qllm.Rag(os.path.join(self.tmp.name, "other.db"), create=True)
        with self.assertRaises(qllm.QllmError) as e:
            rag.index(self.model, [os.path.join(self.tmp.name, "no-such-dir")])
        self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")
        rag.close()
        with self.assertRaises(qllm.QllmError):
            rag.index(self.model, [self.docs])

    def test_example_script(self):
        db = os.path.join(self.tmp.name, "example.db")
        # the example in examples/python, run with the installed package
        example = os.environ.get("QLLM_EXAMPLE_RAG_COT") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python", "rag_cot.py")
        r = subprocess.run([sys.executable, "-B", example, SHIPPED, db,
                            "Who may grant a patent license?", self.docs], capture_output=True, text=True,
                           check=True)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("answer: "))
        self.assertTrue(any(line.startswith("  source [1] chunk ") for line in lines))
        self.assertTrue(any(line.startswith("answer after reasoning: ") for line in lines))
        self.assertTrue(lines[-1].startswith("plain answer: "))
        self.assertIn("reasoning: ", r.stderr)


if __name__ == "__main__":
    unittest.main()


WORDS = '''root ::= "The " word (", " word){2,5} "."
word ::= [a-z]{2,8}
'''
WORDS_RE = r"The [a-z]{2,8}(, [a-z]{2,8}){2,5}\."


@unittest.skipUnless(SHIPPED, "QLLM_SHIPPED_MODEL not given")
class GrammarTest(unittest.TestCase):
    """Constrained output (0.8) on the shipped model: the text of the qllm tool (the C++ core)."""

    @classmethod
    def setUpClass(cls):
        cls.model = qllm.Model(SHIPPED)

    @classmethod
    def tearDownClass(cls):
        cls.model.close()

    def test_gbnf_greedy_equals_the_tool_and_streams_the_same(self):
        prompt = "In the beginning"
        g = qllm.Grammar(WORDS)
        s = self.model.session(temperature=0, n_ctx=256)
        text = s.generate(prompt, max_tokens=60, grammar=g)
        self.assertEqual(s.last_result["finish_reason"], "eos")
        self.assertRegex(text, "^" + WORDS_RE + "$")
        s.reset()
        self.assertEqual("".join(s.stream(prompt, max_tokens=60, grammar=g)), text)
        if os.environ.get("QLLM_CLI"):
            with tempfile.NamedTemporaryFile("w", suffix=".gbnf") as f:
                f.write(WORDS)
                f.flush()
                out = subprocess.run([os.environ["QLLM_CLI"], "run", "-m", SHIPPED, "-p", prompt, "--temp", "0",
                                      "-n", "60", "--grammar-file", f.name, "-q"],
                                     capture_output=True, text=True, check=True).stdout
            self.assertEqual(out, prompt + text + "\n")
        # unconstrained, the same prompt writes something else
        s.reset()
        self.assertIsNone(re.fullmatch(WORDS_RE, s.generate(prompt, max_tokens=60)))

    def test_json_schema_answers_validate(self):
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                  "required": ["name", "age"], "additionalProperties": False}
        g = qllm.Grammar.from_json_schema(schema)
        complete = 0
        for seed in range(1, 5):
            s = self.model.session(temperature=0.8, seed=seed, n_ctx=256)
            text = s.generate("And the LORD said unto Moses,", max_tokens=80, grammar=g)
            if s.last_result["finish_reason"] != "eos":
                continue
            complete += 1
            value = json.loads(text)
            self.assertEqual(sorted(value), ["age", "name"])
            self.assertIsInstance(value["age"], int)
            self.assertTrue(0 <= value["age"] <= 150)
            self.assertLessEqual(len(value["name"]), 12)
        self.assertGreaterEqual(complete, 2)
        # any JSON object
        s = self.model.session(temperature=0, n_ctx=256)
        text = s.chat([("user", "Describe Moses.")], max_tokens=120, grammar=qllm.Grammar.json_object())
        if s.last_result["finish_reason"] == "eos":
            self.assertIsInstance(json.loads(text), dict)
        else:
            self.assertTrue(text.lstrip().startswith("{"))

    def test_errors_name_the_problem(self):
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Grammar('root ::= ("a"')
        self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")
        self.assertIn("line 1", e.exception.message)
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Grammar.from_json_schema({"type": "string", "pattern": "^a+$"})
        self.assertEqual(e.exception.name, "QLLM_ERR_UNSUPPORTED")
        self.assertIn("pattern", e.exception.message)
        with self.assertRaises(qllm.QllmError) as e:
            qllm.Grammar.from_json_schema("{not json")
        self.assertEqual(e.exception.name, "QLLM_ERR_INVALID_ARGUMENT")
        with self.assertRaises(TypeError):
            self.model.session().generate("a", grammar="root ::= \"a\"")
        text = qllm.gbnf_from_json_schema({"type": "integer", "minimum": 5})
        self.assertIn("root", text)
        qllm.Grammar(text).close()

    def test_matcher_by_hand_equals_generate(self):
        g = qllm.Grammar(WORDS)
        prompt = self.model.tokenize("Blessed are")
        want = self.model.session(temperature=0.7, seed=3, n_ctx=256).generate(prompt, max_tokens=60, grammar=g)
        m = qllm.Matcher(g, self.model)
        g.close()  # the matcher keeps what it needs
        s = self.model.session(temperature=0.7, seed=3, n_ctx=256)
        s.eval(prompt)
        out = []
        eos = self.model.info["eos_token"]
        for _ in range(60):
            m.mask_session(s)
            t = s.sample()
            if t == eos:
                self.assertTrue(m.can_end and m.must_end)
                m.accept(t)
                break
            m.accept(t)
            out.append(t)
            s.eval([t])
        self.assertEqual(self.model.detokenize(out), want)
        m.reset()
        self.assertFalse(m.can_end)
        with self.assertRaises(qllm.QllmError):
            m.accept_text("Amen")
        m.accept_text("The ab, cd, ef.")
        masked = m.mask([0.0] * self.model.info["n_vocab"])
        self.assertEqual([i for i, x in enumerate(masked) if x != -math.inf], [eos])
        with self.assertRaises(qllm.QllmError):
            m.mask([0.0] * 3)
        m.close()


class PackageTest(unittest.TestCase):
    """The package as installed: not the checkout, typed, the library it found."""

    def test_installed_not_the_checkout(self):
        venv = os.environ.get("QLLM_TEST_VENV")
        if not venv:
            self.skipTest("QLLM_TEST_VENV is not set")
        self.assertTrue(os.path.realpath(qllm.__file__).startswith(os.path.realpath(venv)), qllm.__file__)
        here = os.path.dirname(os.path.abspath(qllm.__file__))
        self.assertTrue(os.path.exists(os.path.join(here, "py.typed")))
        # the wheel carries the library it was built with, and that is the one loaded
        self.assertEqual(qllm._library_path(), os.path.join(here, "_lib", "libqllm.so.0"))

    def test_errors_carry_the_status(self):
        with self.assertRaises(qllm.QllmError) as cm:
            qllm.Model("/nonexistent/model.gguf")
        self.assertTrue(cm.exception.name.startswith("QLLM_ERR_"), cm.exception.name)
        self.assertIsInstance(cm.exception.status, int)
        self.assertIn("/nonexistent/model.gguf", cm.exception.message)

    def test_context_managers_free(self):
        with qllm.Model(MODEL) as m:
            with m.session(n_ctx=64) as s:
                s.eval(m.tokenize("Once"))
            with self.assertRaises(qllm.QllmError):
                s.eval([1])  # closed
        with self.assertRaises(qllm.QllmError):
            m.tokenize("x")
