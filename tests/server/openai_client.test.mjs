// The official `openai` package against `tandem serve`: models, chat (plain and streaming, usage),
// completions, stop strings, and the errors clients see (401, 404, 400), the server staying up.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withServer, metrics, dataDir } from './serve.mjs';

// The tiny fixture's own template ignores tools; with ../shared/fixtures present the server runs
// the real Qwen3 template (--chat-template-file), which renders them.
const fixtures = process.env.TANDEM_FIXTURES ?? path.join(dataDir, '..', '..', '..', 'shared', 'fixtures');
const qwen3Config = path.join(fixtures, 'tokenizers', 'qwen3', 'tokenizer_config.json');
const templateArgs = [];
if (fs.existsSync(qwen3Config)) {
  const file = path.join(os.tmpdir(), `tandem-qwen3-template-${process.pid}.jinja`);
  fs.writeFileSync(file, JSON.parse(fs.readFileSync(qwen3Config, 'utf8')).chat_template);
  templateArgs.push('--chat-template-file', file);
} else {
  console.log('note: ../shared/fixtures not found: the tools checks are skipped');
}

await withServer(['--api-key', 'sekrit', '-c', '2048', '--parallel', '2', ...templateArgs], async ({ url }) => {
  const client = new OpenAI({ baseURL: url + '/v1', apiKey: 'sekrit', maxRetries: 0 });

  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  const model = models.data[0].id;
  assert.equal(model, 'tiny-qwen3moe');

  const messages = [{ role: 'user', content: 'Hello there' }];
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
  assert.equal(plain.object, 'chat.completion');
  assert.equal(plain.choices[0].message.role, 'assistant');
  assert.equal(typeof plain.choices[0].message.content, 'string');
  assert.ok(['length', 'stop'].includes(plain.choices[0].finish_reason));
  assert.ok(plain.usage.prompt_tokens > 0);
  assert.ok(plain.usage.completion_tokens > 0 && plain.usage.completion_tokens <= 12);
  assert.equal(plain.usage.total_tokens, plain.usage.prompt_tokens + plain.usage.completion_tokens);
  assert.equal(plain.usage.prompt_tokens_details.cached_tokens, 0);

  // Streaming gives the same greedy text, chunk by chunk, then usage, then [DONE] (the client ends).
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += choice.delta.content ?? '';
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  assert.ok(chunks >= 3);
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(finish, plain.choices[0].finish_reason);
  // The same prompt again: its whole 16-token blocks come from the prefix cache (the last token
  // always runs); the rest of the usage is the plain reply's.
  assert.equal(usage.prompt_tokens_details.cached_tokens, Math.floor((usage.prompt_tokens - 1) / 16) * 16);
  assert.deepEqual({ ...usage, prompt_tokens_details: plain.usage.prompt_tokens_details }, plain.usage);

  // max_completion_tokens, seed: the same seed gives the same sampled text.
  const sampled = async () => (await client.chat.completions.create({
    model, messages, max_completion_tokens: 10, temperature: 0.9, top_p: 0.9, seed: 7 })).choices[0].message.content;
  assert.equal(await sampled(), await sampled());

  // A stop string cuts the text before it (and is not part of it).
  if (plain.choices[0].message.content.length > 4) {
    const stop = plain.choices[0].message.content.slice(2, 4);
    const cut = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stop: [stop] });
    assert.equal(cut.choices[0].message.content, plain.choices[0].message.content.slice(0, plain.choices[0].message.content.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
  }

  // Tools reach the template: the prompt grows by their rendered schemas; a tool result goes back in.
  if (templateArgs.length) {
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const withTools = await client.chat.completions.create({ model, messages, tools, max_tokens: 2, temperature: 0 });
  assert.ok(withTools.usage.prompt_tokens > plain.usage.prompt_tokens + 20);
  const toolTurn = await client.chat.completions.create({ model, tools, max_tokens: 2, temperature: 0, messages: [
    ...messages,
    { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }] },
    { role: 'tool', tool_call_id: 'c1', content: 'sunny' }] });
  assert.ok(toolTurn.usage.prompt_tokens > withTools.usage.prompt_tokens);
  }

  const completion = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
  assert.equal(completion.object, 'text_completion');
  assert.equal(typeof completion.choices[0].text, 'string');
  assert.equal(completion.usage.completion_tokens, 8);
  let streamed = '';
  for await (const chunk of await client.completions.create({
    model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, stream: true })) {
    streamed += chunk.choices[0]?.text ?? '';
  }
  assert.equal(streamed, completion.choices[0].text);

  // Errors, as the client raises them.
  const expectError = async (status, promise, check = () => {}) => {
    await assert.rejects(promise, (e) => {
      assert.equal(e.status, status, String(e));
      assert.ok(e.error && typeof e.error.message === 'string', 'OpenAI error JSON');
      check(e);
      return true;
    });
  };
  const wrongKey = new OpenAI({ baseURL: url + '/v1', apiKey: 'nope', maxRetries: 0 });
  await expectError(401, wrongKey.models.list());
  await expectError(401, wrongKey.chat.completions.create({ model, messages }));
  await expectError(404, client.chat.completions.create({ model: 'gpt-4o', messages }), (e) => assert.equal(e.code, 'model_not_found'));
  await expectError(400, client.chat.completions.create({ model, messages: [] }));
  await expectError(400, client.chat.completions.create({ model, messages, temperature: 'hot' }), (e) => assert.equal(e.param, 'temperature'));
  await expectError(400, client.chat.completions.create({ model, messages, max_tokens: 100000 }));
  await expectError(400, client.chat.completions.create({ model, messages: [{ role: 'user', content: 'word '.repeat(3000) }] }),
    (e) => assert.equal(e.code, 'context_length_exceeded'));
  // Raw requests: malformed JSON, unknown fields ignored, no key.
  const raw = (body, headers = { Authorization: 'Bearer sekrit' }) =>
    fetch(url + '/v1/chat/completions', { method: 'POST', body, headers: { 'Content-Type': 'application/json', ...headers } });
  let res = await raw('{"messages": [');
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.type, 'invalid_request_error');
  res = await raw('{"messages": ' + '['.repeat(100000) + ']'.repeat(100000) + '}');
  assert.equal(res.status, 400);
  assert.match((await res.json()).error.message, /deeper than/);
  res = await raw(JSON.stringify({ messages, max_tokens: 2, temperature: 0, frobnicate: true }));
  assert.equal(res.status, 200);
  assert.equal((await res.json()).usage.completion_tokens, 2);  // (the headers come before the reply)
  res = await raw(JSON.stringify({ messages }), {});
  assert.equal(res.status, 401);
  res = await fetch(url + '/health');
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: 'ok' });

  const m = await (async () => {
    const r = await fetch(url + '/metrics', { headers: { Authorization: 'Bearer sekrit' } });
    assert.equal(r.status, 200);
    return r.text();
  })();
  assert.match(m, /tandem_kv_blocks_in_use 0/);
  assert.match(m, /tandem_http_requests_total\{code="401"\} 3/);
  assert.match(m, /tandem_step_seconds_bucket\{le="\+Inf"\}/);
  void metrics;
  console.log('openai client tests passed');
});
