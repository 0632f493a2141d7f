#include "server/chat_page.hpp"

namespace tandem::server {

std::string_view chat_page_html() {
  static constexpr std::string_view page = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tandem chat</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 0 auto; padding: 1rem; }
  #log { display: flex; flex-direction: column; gap: .5rem; margin-bottom: 1rem; }
  .msg { white-space: pre-wrap; padding: .5rem .75rem; border-radius: .5rem; }
  .user { background: #e8eefc; align-self: flex-end; }
  .assistant { background: #f2f2f2; }
  .reasoning { color: #666; font-style: italic; }
  form { display: flex; gap: .5rem; }
  textarea { flex: 1; min-height: 3rem; }
  #status { color: #666; font-size: .85rem; margin-top: .5rem; }
</style>
</head>
<body>
<h1>Tandem</h1>
<div id="log"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
  <button id="send" type="submit">Send</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<div id="status">ready</div>
<details><summary>Settings</summary>
  <label>API key <input id="key" type="password"></label>
  <label>Max tokens <input id="max" type="number" value="256" min="1"></label>
  <label>Temperature <input id="temp" type="number" value="0.7" step="0.1" min="0" max="2"></label>
</details>
<script>
const log = document.getElementById('log'), input = document.getElementById('input');
const send = document.getElementById('send'), stop = document.getElementById('stop');
const status = document.getElementById('status'), key = document.getElementById('key');
key.value = localStorage.getItem('tandem-key') || '';
key.onchange = () => localStorage.setItem('tandem-key', key.value);
const messages = [];
let controller = null;

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  div.textContent = text;
  log.appendChild(div);
  return div;
}

input.addEventListener('keydown', e => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); document.getElementById('form').requestSubmit(); }
});
stop.onclick = () => { if (controller) controller.abort(); };

document.getElementById('form').onsubmit = async e => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = '';
  messages.push({role: 'user', content: text});
  bubble('user', text);
  const reply = bubble('assistant', '');
  const thinking = document.createElement('div');
  thinking.className = 'reasoning';
  reply.before(thinking);
  let content = '';
  controller = new AbortController();
  send.disabled = true; stop.disabled = false; status.textContent = 'generating…';
  const headers = {'Content-Type': 'application/json'};
  if (key.value) headers['Authorization'] = 'Bearer ' + key.value;
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST', headers, signal: controller.signal,
      body: JSON.stringify({messages, stream: true, max_tokens: Number(document.getElementById('max').value),
                            temperature: Number(document.getElementById('temp').value)})});
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || res.statusText);
    }
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = '', finish = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data: ')) continue;
          const data = line.slice(6);
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.delta.reasoning_content) thinking.textContent += choice.delta.reasoning_content;
          if (choice.delta.content) { content += choice.delta.content; reply.textContent = content; }
          if (choice.delta.tool_calls)
            for (const call of choice.delta.tool_calls)
              reply.textContent += '\n[tool call ' + call.function.name + ' ' + call.function.arguments + ']';
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    status.textContent = 'done (' + (finish || 'end') + ')';
  } catch (err) {
    status.textContent = err.name === 'AbortError' ? 'stopped' : 'error: ' + err.message;
  } finally {
    messages.push({role: 'assistant', content});
    controller = null; send.disabled = false; stop.disabled = true;
  }
};
</script>
</body>
</html>
)HTML";
  return page;
}

}  // namespace tandem::server
