// The npm package llama3-tokenizer-js (pinned in tests/serve/package.json) as an independent
// Llama-3 reference for tests/llama3_tokenizer.sh:
//   node llama3_reference.mjs tokenizer-json OUT   its vocabulary and merges as a Hugging Face
//                                                  tokenizer.json (Llama-3's pre-tokenizer)
//   node llama3_reference.mjs encode CORPUS OUT    each string of the JSON array CORPUS encoded by
//                                                  its own encoder (no BOS/EOS), as a JSON array
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = join(here, '..', 'serve', 'node_modules', 'llama3-tokenizer-js', 'bundle',
  'llama3-tokenizer-with-baked-data.js');
const { default: tok } = await import(pkg);

const [cmd, a, b] = process.argv.slice(2);
if (cmd === 'tokenizer-json') {
  const vocab = {};
  const added = [];
  tok.vocabById.forEach((piece, id) => {
    if (id >= 128000) {
      added.push({ id, content: piece, single_word: false, lstrip: false, rstrip: false,
        normalized: false, special: true });
    } else {
      vocab[piece] = id;
    }
  });
  const merges = [...tok.merges.entries()].sort((x, y) => x[1] - y[1]).map(([k]) => k);
  const regex = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: true,
      vocab, merges },
  };
  writeFileSync(a, JSON.stringify(json));
} else if (cmd === 'encode') {
  const corpus = JSON.parse(readFileSync(a, 'utf8'));
  writeFileSync(b, JSON.stringify(corpus.map((s) => tok.encode(s, { bos: false, eos: false }))));
} else {
  console.error('usage: llama3_reference.mjs tokenizer-json OUT | encode CORPUS OUT');
  process.exit(2);
}
