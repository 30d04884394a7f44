// The official openai npm client (pinned in package.json) against a running `qllm serve`:
// models, greedy completions (deterministic), a streamed chat equal to the same chat not
// streamed, embeddings (the client's default base64 transfer and plain floats), a wrong key
// (401) and a prompt longer than the window (400).
//   node openai_client.mjs BASE_URL API_KEY MODEL_ID
// Exits 1 with a message naming the failed check; prints one summary line on success.
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
if (!baseURL || !apiKey || !model) {
  console.error('usage: node openai_client.mjs BASE_URL API_KEY MODEL_ID');
  process.exit(2);
}

// no retries: a failure shows on the first request that fails
const options = { baseURL: baseURL + '/v1', maxRetries: 0, timeout: 120_000 };
const client = new OpenAI({ ...options, apiKey });
let passed = 0;

function check(cond, what, detail) {
  if (!cond) {
    throw new Error(what + (detail === undefined ? '' : ': ' + JSON.stringify(detail)));
  }
}

async function step(name, fn) {
  try {
    await fn();
  } catch (err) {
    const status = err && err.status !== undefined ? ` (HTTP ${err.status})` : '';
    console.error(`openai client: ${name} failed${status}: ${err && err.message ? err.message : err}`);
    process.exit(1);
  }
  passed += 1;
}

// rejects with an APIError of this status whose message matches `words` (if given)
async function expectStatus(promise, status, words) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  check(err !== null, `expected HTTP ${status}, the request succeeded`);
  check(err instanceof OpenAI.APIError, `expected an APIError, got ${err && err.constructor && err.constructor.name}`,
        String(err));
  check(err.status === status, `expected HTTP ${status}, got ${err.status}`, err.message);
  if (words) check(words.test(err.message), `error message does not match ${words}`, err.message);
  return err;
}

function checkUsage(usage, maxCompletion) {
  check(usage && Number.isInteger(usage.prompt_tokens) && Number.isInteger(usage.completion_tokens) &&
        Number.isInteger(usage.total_tokens), 'usage has integer prompt/completion/total_tokens', usage);
  check(usage.prompt_tokens > 0, 'usage.prompt_tokens > 0', usage);
  check(usage.total_tokens === usage.prompt_tokens + usage.completion_tokens,
        'usage.total_tokens = prompt_tokens + completion_tokens', usage);
  check(usage.completion_tokens >= 1 && usage.completion_tokens <= maxCompletion,
        `1 <= usage.completion_tokens <= ${maxCompletion}`, usage);
}

const finishReasons = ['stop', 'length'];

await step('models.list', async () => {
  const page = await client.models.list();
  const ids = page.data.map((m) => m.id);
  check(ids.includes(model), `models.list() contains ${model}`, ids);
  for (const m of page.data) check(m.object === 'model', 'each model has object "model"', m);
});

const completionRequest = { model, prompt: 'In the beginning', temperature: 0, max_tokens: 16 };
let firstText = null;
await step('completions.create', async () => {
  const r = await client.completions.create(completionRequest);
  check(r.object === 'text_completion', 'object is "text_completion"', r.object);
  check(Array.isArray(r.choices) && r.choices.length === 1, 'exactly one choice', r.choices);
  const c = r.choices[0];
  check(c.index === 0, 'choice index 0', c.index);
  check(typeof c.text === 'string' && c.text.length > 0, 'non-empty text', c.text);
  check(finishReasons.includes(c.finish_reason), 'finish_reason is stop or length', c.finish_reason);
  checkUsage(r.usage, 16);
  if (c.finish_reason === 'length') {
    check(r.usage.completion_tokens === 16, 'finish_reason length after max_tokens 16 tokens', r.usage);
  }
  firstText = c.text;
});

await step('completions.create again (greedy is deterministic)', async () => {
  const r = await client.completions.create(completionRequest);
  check(r.choices[0].text === firstText, 'the same text as the first greedy completion',
        { first: firstText, second: r.choices[0].text });
});

const chatRequest = {
  model,
  temperature: 0,
  max_tokens: 24,
  messages: [
    { role: 'system', content: 'Answer in the words of the King James Bible.' },
    { role: 'user', content: 'Who made the heaven and the earth?' },
  ],
};
await step('chat.completions.create, streamed and not', async () => {
  const whole = await client.chat.completions.create(chatRequest);
  check(whole.object === 'chat.completion', 'object is "chat.completion"', whole.object);
  check(whole.choices.length === 1, 'exactly one choice', whole.choices);
  const msg = whole.choices[0].message;
  check(msg.role === 'assistant', 'message role is assistant', msg);
  check(typeof msg.content === 'string' && msg.content.length > 0, 'non-empty message content', msg);
  check(finishReasons.includes(whole.choices[0].finish_reason), 'finish_reason is stop or length',
        whole.choices[0].finish_reason);
  checkUsage(whole.usage, 24);

  const stream = await client.chat.completions.create({ ...chatRequest, stream: true });
  let text = '';
  let chunks = 0;
  let finish = null;
  let afterFinish = 0;
  for await (const chunk of stream) {
    chunks += 1;
    check(chunk.object === 'chat.completion.chunk', 'chunk object is "chat.completion.chunk"', chunk);
    if (!chunk.choices || chunk.choices.length === 0) continue;  // e.g. a usage-only chunk
    const choice = chunk.choices[0];
    if (finish !== null) afterFinish += 1;
    if (choice.delta && typeof choice.delta.content === 'string') text += choice.delta.content;
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  check(chunks >= 1, 'at least one chunk');
  check(finish !== null, 'a chunk with finish_reason');
  check(afterFinish === 0, 'no choice chunks after the one with finish_reason', afterFinish);
  check(finishReasons.includes(finish), 'stream finish_reason is stop or length', finish);
  check(finish === whole.choices[0].finish_reason, 'stream finish_reason equals the non-streamed one',
        { streamed: finish, whole: whole.choices[0].finish_reason });
  check(text === msg.content, 'streamed text equals the non-streamed text', { streamed: text, whole: msg.content });
});

// structured output: a JSON Schema through response_format, the official client's shape; the
// answer parses, has the schema's fields and types, and streams the same text
const schemaRequest = {
  model,
  temperature: 0.9,
  seed: 5,
  max_tokens: 200,
  messages: [{ role: 'user', content: 'Name a king of Israel and his age.' }],
  response_format: {
    type: 'json_schema',
    json_schema: {
      name: 'king',
      strict: true,
      schema: {
        type: 'object',
        properties: { name: { type: 'string', maxLength: 16 }, age: { type: 'integer', minimum: 1, maximum: 120 } },
        required: ['name', 'age'],
        additionalProperties: false,
      },
    },
  },
};
await step('chat.completions.create with response_format json_schema, streamed and not', async () => {
  const whole = await client.chat.completions.create(schemaRequest);
  const content = whole.choices[0].message.content;
  check(whole.choices[0].finish_reason === 'stop', 'the answer ends where the schema ends', whole.choices[0]);
  const v = JSON.parse(content);
  check(typeof v.name === 'string' && v.name.length <= 16, 'name is a string of at most 16 characters', v);
  check(Number.isInteger(v.age) && v.age >= 1 && v.age <= 120, 'age is an integer in [1, 120]', v);
  check(Object.keys(v).length === 2, 'no other fields', v);
  const stream = await client.chat.completions.create({ ...schemaRequest, stream: true });
  let text = '';
  for await (const chunk of stream)
    if (chunk.choices && chunk.choices.length && typeof chunk.choices[0].delta.content === 'string')
      text += chunk.choices[0].delta.content;
  check(text === content, 'the streamed answer equals the whole one', { text, content });
  let refused = null;
  try {
    await client.chat.completions.create({ ...schemaRequest, response_format: { type: 'json_schema',
      json_schema: { name: 'd', schema: { type: 'string', format: 'date' } } } });
  } catch (e) {
    refused = e;
  }
  check(refused && refused.status === 400 && /'format' is not supported/.test(refused.message),
        'an unsupported keyword is a 400 naming it', refused && refused.message);
});

function checkEmbeddings(r, what) {
  check(r.object === 'list', `${what}: object is "list"`, r.object);
  check(Array.isArray(r.data) && r.data.length === 2, `${what}: two embeddings`, r.data && r.data.length);
  const n = r.data[0].embedding.length;
  check(n > 0, `${what}: non-empty vectors`, n);
  r.data.forEach((d, i) => {
    check(d.object === 'embedding', `${what}: data[${i}].object is "embedding"`, d.object);
    check(d.index === i, `${what}: data[${i}].index is ${i}`, d.index);
    check(d.embedding.length === n, `${what}: equal lengths`, [n, d.embedding.length]);
    check(d.embedding.every((x) => Number.isFinite(x)), `${what}: finite values`);
    const norm = Math.sqrt(d.embedding.reduce((s, x) => s + x * x, 0));
    check(Math.abs(norm - 1) <= 1e-3, `${what}: data[${i}] has norm 1 (+-1e-3)`, norm);
  });
}

await step('embeddings.create', async () => {
  // the client asks for encoding_format "base64" by default and decodes little-endian float32
  const b64 = await client.embeddings.create({ model, input: ['a', 'b c'] });
  checkEmbeddings(b64, 'base64');
  const floats = await client.embeddings.create({ model, input: ['a', 'b c'], encoding_format: 'float' });
  checkEmbeddings(floats, 'float');
  floats.data.forEach((d, i) => {
    const other = b64.data[i].embedding;
    check(d.embedding.length === other.length, 'base64 and float vectors of equal length');
    const diff = Math.max(...d.embedding.map((x, j) => Math.abs(x - other[j])));
    check(diff <= 1e-6, `data[${i}]: base64 and float vectors equal`, diff);
  });
});

await step('a wrong API key', async () => {
  const wrong = new OpenAI({ ...options, apiKey: 'wrong' });
  const err = await expectStatus(wrong.completions.create(completionRequest), 401);
  check(err instanceof OpenAI.AuthenticationError, 'an AuthenticationError', err.constructor.name);
});

await step('a prompt longer than the window', async () => {
  const err = await expectStatus(
    client.completions.create({ model, prompt: 'word '.repeat(2000), temperature: 0, max_tokens: 16 }), 400,
    /too many/i);
  check(err instanceof OpenAI.BadRequestError, 'a BadRequestError', err.constructor.name);
});

console.log(`openai client: ${passed} checks passed`);
