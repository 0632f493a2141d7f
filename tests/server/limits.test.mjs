// Limits with real connections: a body over --max-body is 413, a request past the queue is 429, a
// client that stalls mid-request is dropped after --timeout, a streaming client that hangs up
// frees its sequence; the server keeps serving through all of it.
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { withServer, metrics, dataDir } from './serve.mjs';

// The bundled trained model is slow enough (~100 tok/s here) that a long reply is still running.
const model = path.join(dataDir, 'trained-qwen3moe', 'qwen3moe-q4_k_m.gguf');

await withServer(['--parallel', '1', '--queue', '0', '--max-body', '1', '--timeout', '2', '-c', '4096'], async ({ url }) => {
  const post = (body, signal) => fetch(url + '/v1/chat/completions', {
    method: 'POST', signal, headers: { 'Content-Type': 'application/json' }, body });

  let res = await post(JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(2 << 20) }] }));
  assert.equal(res.status, 413);
  assert.equal((await res.json()).error.type, 'invalid_request_error');

  // One long streaming reply takes the only slot; with no queue the next request is refused.
  const controller = new AbortController();
  const long = await post(JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], stream: true,
    max_tokens: 3000, ignore_eos: true }), controller.signal);
  assert.equal(long.status, 200);
  const reader = long.body.getReader();
  await reader.read();  // the role chunk: the sequence is in
  res = await post(JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }));
  assert.equal(res.status, 429);
  const error = (await res.json()).error;
  assert.equal(error.type, 'rate_limit_error');
  assert.equal(error.code, 'rate_limit_exceeded');
  controller.abort();

  // The hung-up stream is cancelled and its blocks freed within a few seconds.
  let m;
  for (let i = 0; i < 50; ++i) {
    m = await metrics(url);
    if (m['tandem_requests_running'] === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(m['tandem_requests_running'], 0);
  assert.equal(m['tandem_kv_blocks_in_use'], 0);
  assert.equal(m['tandem_client_disconnects_total'], 1);
  assert.ok(m['tandem_generation_tokens_total'] < 3000);

  // A client that sends half a request and stalls is disconnected after --timeout (2 s).
  const { port, hostname } = new URL(url);
  const closedAfter = await new Promise((resolve, reject) => {
    const start = Date.now();
    const socket = net.connect(Number(port), hostname, () => {
      socket.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mess');
    });
    socket.on('data', () => {});
    socket.on('close', () => resolve((Date.now() - start) / 1000));
    socket.on('error', () => {});
    setTimeout(() => reject(new Error('the stalled client was not dropped')), 15000);
  });
  assert.ok(closedAfter >= 1.5 && closedAfter < 10, `dropped after ${closedAfter} s`);

  // Still serving after the stalled client. Greedy, and the length cap or an end token may stop it
  // (a sampled reply of the tiny model sometimes ended after one token).
  res = await post(JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 }));
  assert.equal(res.status, 200);
  const reply = await res.json();
  const finish = reply.choices[0].finish_reason;
  assert.ok(finish === 'length' ? reply.usage.completion_tokens === 2 : finish === 'stop' && reply.usage.completion_tokens <= 2,
            `finish ${finish} after ${reply.usage.completion_tokens} tokens`);
  console.log('limits test passed');
}, model);
