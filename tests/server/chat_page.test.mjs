// Headless Chromium (Debian's) through playwright-core: open the chat page, send a message, see
// streamed text arrive, start a long reply and press Stop; the server cancels it and frees its KV.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { chromium } from 'playwright-core';
import path from 'node:path';
import { withServer, metrics, SKIP, dataDir } from './serve.mjs';

const browserPath = process.env.CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => fs.existsSync(p));
if (!browserPath) {
  console.log('skipped: no chromium (apt-get install chromium)');
  process.exit(SKIP);
}

// The bundled trained model (~100 tok/s here): slow enough that a long reply is still running when
// Stop is pressed (the tiny fixtures finish 3000 tokens in a fraction of a second).
const model = path.join(dataDir, 'trained-qwen3moe', 'qwen3moe-q4_k_m.gguf');
await withServer(['-c', '4096', '--parallel', '2'], async ({ url }) => {
  const browser = await chromium.launch({ executablePath: browserPath, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    await page.goto(url + '/');
    assert.equal(await page.title(), 'Tandem chat');

    await page.click('summary');  // the settings
    await page.fill('#max', '16');
    await page.fill('#temp', '0');
    await page.fill('#input', 'Hello');
    await page.click('#send');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('done'), null, { timeout: 30000 });
    const first = await page.textContent('.msg.assistant');
    assert.ok(first.length > 0, 'streamed text shown');
    assert.equal(await page.textContent('.msg.user'), 'Hello');

    // A reply long enough to stop: Stop aborts the stream; the server sees the client go.
    // (ignore_eos, a llama-server extension, keeps the tiny model from ending early)
    await page.route('**/v1/chat/completions', (route) =>
      route.continue({ postData: JSON.stringify({ ...JSON.parse(route.request().postData()), ignore_eos: true }) }));
    await page.fill('#max', '3000');
    await page.fill('#temp', '1');
    await page.fill('#input', 'Tell me a long story');
    await page.click('#send');
    await page.waitForFunction(() => document.querySelectorAll('.msg.assistant')[1]?.textContent.length > 20, null, { timeout: 30000 });
    assert.equal(await page.isEnabled('#stop'), true);
    await page.click('#stop');
    await page.waitForFunction(() => document.getElementById('status').textContent === 'stopped', null, { timeout: 10000 });
    const shown = await page.$$eval('.msg.assistant', (els) => els[1].textContent.length);
    assert.ok(shown > 20);

    // Within a few seconds the server notices the disconnect and returns the blocks.
    let m;
    for (let i = 0; i < 50; ++i) {
      m = await metrics(url);
      if (m['tandem_requests_running'] === 0 && m['tandem_kv_blocks_in_use'] === 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(m['tandem_kv_blocks_in_use'], 0);
    assert.equal(m['tandem_sequences_cancelled_total'], 1);
    assert.equal(m['tandem_client_disconnects_total'], 1);
    assert.ok(m['tandem_generation_tokens_total'] < 16 + 3000, 'the stopped reply did not run to its end');
    assert.match(await page.textContent('#status'), /^stopped$/);
  } finally {
    await browser.close();
  }
  console.log('chat page test passed');
}, model);
