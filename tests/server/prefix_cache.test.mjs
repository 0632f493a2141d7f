// The prefix cache through the `openai` client: a second request sharing a long system prompt, and
// the next turn of a chat, report usage.prompt_tokens_details.cached_tokens > 0 and give the same
// greedy replies as a server started with --no-prefix-cache (which reports 0); /metrics counts the
// hits and the blocks the cache holds, and no block stays in use.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { withServer, startServer, metrics, dataDir } from './serve.mjs';

const model = path.join(dataDir, 'trained-qwen3moe', 'qwen3moe-q4_k_m.gguf');
const args = ['-c', '1024', '--parallel', '2'];

const system = 'You are a storyteller for small children. ' +
  'Every story has a cat, a dog and a little girl named Lily who likes the park, the sun and big red balls. ' +
  'Keep sentences short, use simple words, and end each story happily with everyone going home for dinner. ' +
  'Never use scary words; if asked for something scary, tell a story about a friendly bird instead.';

// The replies and usages of: two questions sharing the system prompt, then a second turn.
async function conversation(url) {
  const client = new OpenAI({ baseURL: url + '/v1', apiKey: 'none', maxRetries: 0 });
  const ask = (messages) => client.chat.completions.create({ model: 'qwen3moe-q4_k_m', messages, max_tokens: 12, temperature: 0 });
  const first = await ask([{ role: 'system', content: system }, { role: 'user', content: 'Tell me about the cat.' }]);
  const second = await ask([{ role: 'system', content: system }, { role: 'user', content: 'What did Lily do?' }]);
  const turn = await ask([
    { role: 'system', content: system }, { role: 'user', content: 'Tell me about the cat.' },
    { role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: 'And the dog?' },
  ]);
  return [first, second, turn].map((r) => ({ text: r.choices[0].message.content, usage: r.usage }));
}

await withServer(args, async ({ url }) => {
  const cached = await conversation(url);
  const m = await metrics(url);

  const plainServer = await startServer([...args, '--no-prefix-cache'], model);
  let plain, plainMetrics;
  try {
    plain = await conversation(plainServer.url);
    plainMetrics = await metrics(plainServer.url);
  } finally {
    assert.equal(await plainServer.stop(), 0);
  }

  for (let i = 0; i < 3; ++i) {
    assert.equal(cached[i].text, plain[i].text, `reply ${i}`);
    assert.equal(cached[i].usage.prompt_tokens, plain[i].usage.prompt_tokens);
    assert.equal(plain[i].usage.prompt_tokens_details.cached_tokens, 0);
  }
  assert.ok(cached[0].usage.prompt_tokens > 64, `the system prompt is long: ${cached[0].usage.prompt_tokens} tokens`);
  assert.equal(cached[0].usage.prompt_tokens_details.cached_tokens, 0);
  // Whole 16-token blocks of the shared start (the system prompt, then the whole first turn).
  const second = cached[1].usage.prompt_tokens_details.cached_tokens;
  const turn = cached[2].usage.prompt_tokens_details.cached_tokens;
  assert.ok(second >= 48 && second % 16 === 0 && second < cached[1].usage.prompt_tokens, `second: ${second}`);
  assert.ok(turn >= Math.floor(cached[0].usage.prompt_tokens / 16) * 16 && turn % 16 === 0, `turn: ${turn}`);
  console.log(`cached tokens: ${second} of ${cached[1].usage.prompt_tokens}, ${turn} of ${cached[2].usage.prompt_tokens}`);

  assert.equal(m['tandem_prefix_cache_hit_tokens_total'], second + turn);
  assert.ok(m['tandem_kv_blocks_cached'] > 0);
  assert.equal(m['tandem_kv_blocks_in_use'], 0);
  assert.equal(m['tandem_kv_blocks_free'], m['tandem_kv_blocks_total']);
  // Attention on the CPU: the pool is host memory already, so there is no host tier.
  assert.equal(m['tandem_kv_host_tier_blocks'], 0);
  assert.equal(m['tandem_kv_host_tier_loaded_blocks_total'], 0);
  // The prefill skipped the cached tokens.
  assert.equal(m['tandem_prefill_tokens_total'], plainMetrics['tandem_prefill_tokens_total'] - second - turn);
  assert.equal(plainMetrics['tandem_kv_blocks_cached'], 0);
  assert.equal(plainMetrics['tandem_prefix_cache_hit_tokens_total'], 0);

  // The SSD tier: a server started later with the same --kv-disk finds the first prompt's blocks.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-serve-kv-'));
  try {
    for (const expectCached of [false, true]) {
      const disk = await startServer([...args, '--kv-disk', dir, '--kv-disk-size', '256M'], model);
      try {
        const [first] = await conversation(disk.url);
        assert.equal(first.text, plain[0].text);
        const fromDisk = first.usage.prompt_tokens_details.cached_tokens;
        if (expectCached) assert.equal(fromDisk, Math.floor((first.usage.prompt_tokens - 1) / 16) * 16);
        else assert.equal(fromDisk, 0);
      } finally {
        assert.equal(await disk.stop(), 0);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log('prefix cache test passed');
}, model);
