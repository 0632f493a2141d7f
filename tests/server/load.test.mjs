// A bounded load test: 32 concurrent clients (streaming and not) of which about a quarter hang up
// at a random moment. No crash; every completed greedy reply equals the reply to the same request
// sent alone; afterwards no KV block is in use and the metrics add up.
import assert from 'node:assert/strict';
import http from 'node:http';
import { withServer, metrics } from './serve.mjs';

const CLIENTS = 32;
const prompts = ['Hi', 'Tell me about the sea', 'What is 2 + 2?', 'Write a poem about autumn leaves falling',
  'Translate: good morning', 'List three colours', 'Why is the sky blue? Explain at length please', 'Bye'];

// node:http rather than fetch: an aborted undici fetch could leave its promise pending forever
// (seen once in ~20 runs on a loaded machine), and a hung-up client here is just a closed socket.
function ask(url, prompt, stream, hangUpAfterMs) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (fn, value) => { if (!settled) { settled = true; fn(value); } };
    const req = http.request(url + '/v1/chat/completions', {
      method: 'POST', agent: false, headers: { 'Content-Type': 'application/json' },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        try {
          settle(resolve, parseReply(res.statusCode, body, stream));
        } catch (e) {
          settle(reject, e);
        }
      });
      res.on('error', () => settle(reject, new HungUp()));
    });
    req.on('error', (e) => settle(reject, hangUpAfterMs !== undefined ? new HungUp() : e));
    req.on('close', () => settle(reject, new HungUp()));
    if (hangUpAfterMs !== undefined) setTimeout(() => req.destroy(), hangUpAfterMs);
    req.end(JSON.stringify({ messages: [{ role: 'user', content: prompt }], max_tokens: 24, temperature: 0, stream }));
  });
}

class HungUp extends Error {}

function parseReply(status, body, stream) {
  assert.equal(status, 200, body);
  if (!stream) return JSON.parse(body).choices[0].message.content;
  let text = '';
  assert.ok(body.trimEnd().endsWith('data: [DONE]'));
  for (const line of body.split('\n'))
    if (line.startsWith('data: {')) text += JSON.parse(line.slice(6)).choices[0]?.delta?.content ?? '';
  return text;
}

await withServer(['-c', '512', '--parallel', '8', '--queue', '64', '--max-batch-tokens', '64'], async ({ url }) => {
  const solo = [];
  for (const p of prompts) solo.push(await ask(url, p, false));

  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const outcomes = await Promise.all(Array.from({ length: CLIENTS }, async (_, i) => {
    const prompt = i % prompts.length;
    const stream = i % 2 === 0;
    const hangUp = random() < 0.25;
    const hangUpAfterMs = hangUp ? 20 + random() * 400 : undefined;
    try {
      const text = await ask(url, prompts[prompt], stream, hangUpAfterMs);
      return { prompt, text, completed: true };
    } catch (e) {
      if (!(e instanceof HungUp)) throw e;
      return { prompt, completed: false };
    }
  }));
  const completed = outcomes.filter((o) => o.completed);
  for (const o of completed) assert.equal(o.text, solo[o.prompt], `prompt ${o.prompt}`);
  const aborted = CLIENTS - completed.length;
  console.log(`${completed.length} completed (all equal to their solo replies), ${aborted} hung up`);
  assert.ok(completed.length >= CLIENTS / 2);

  let m;
  for (let i = 0; i < 100; ++i) {  // hung-up clients are noticed within a couple of seconds
    m = await metrics(url);
    if (m['tandem_requests_running'] === 0 && m['tandem_requests_waiting'] === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(m['tandem_requests_running'], 0);
  assert.equal(m['tandem_requests_waiting'], 0);
  assert.equal(m['tandem_kv_blocks_in_use'], 0);
  assert.equal(m['tandem_kv_blocks_free'], m['tandem_kv_blocks_total']);
  const requests = prompts.length + CLIENTS;
  // A client that hung up before its request was sent never reached the server.
  const seen = m['tandem_chat_completion_requests_total'];
  assert.ok(seen >= requests - aborted && seen <= requests, `${seen} requests seen`);
  assert.equal(m['tandem_sequences_submitted_total'], seen);
  assert.equal(m['tandem_sequences_finished_total'], seen);
  assert.ok(m['tandem_sequences_cancelled_total'] <= aborted);
  // Every cancel comes from a disconnect; a client may also hang up after its sequence finished
  // (before or while its reply is written), which counts a disconnect and cancels nothing.
  assert.ok(m['tandem_sequences_cancelled_total'] <= m['tandem_client_disconnects_total']);
  assert.ok(m['tandem_client_disconnects_total'] <= aborted,
            `${m['tandem_client_disconnects_total']} disconnects, ${aborted} clients hung up`);
  assert.ok(m['tandem_generation_tokens_total'] >= completed.length);
  assert.equal(m['tandem_step_seconds_count'], m['tandem_step_seconds_bucket{le="+Inf"}']);
  // Every sampled token is a sequence's first or follows one of its own.
  assert.equal(m['tandem_time_to_first_token_seconds_count'] + m['tandem_inter_token_latency_seconds_count'],
               m['tandem_generation_tokens_total']);
  assert.ok(m['tandem_time_to_first_token_seconds_count'] <= seen);
  // Still serving.
  assert.equal(await ask(url, prompts[0], false), solo[0]);
  console.log('load test passed');
});
