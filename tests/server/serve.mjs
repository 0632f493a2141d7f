// Starts `tandem serve` on a free loopback port for a test and stops it afterwards.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const dataDir = path.resolve(here, '..', 'data');

// Exit code ctest reads as "skipped" (SKIP_RETURN_CODE).
export const SKIP = 77;

export async function startServer(extraArgs = [], model = path.join(dataDir, 'tiny-qwen3moe')) {
  const cli = process.env.TANDEM_CLI;
  if (!cli) throw new Error('set TANDEM_CLI to the tandem executable');
  const args = ['serve', '-m', model, '--port', '0', '-t', '2', ...extraArgs];
  const child = spawn(cli, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start:\n' + log)), 60000);
    const onData = (chunk) => {
      log += chunk.toString();
      const m = log.match(/listening on (http:\/\/[0-9.]+:\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
  });
  return {
    url,
    log: () => log,
    alive: () => child.exitCode === null && child.signalCode === null,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal)));
      child.kill('SIGINT');
      return exited;
    },
  };
}

// The Prometheus text as {name or name{labels}: number}.
export async function metrics(url) {
  const text = await (await fetch(url + '/metrics')).text();
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out[line.slice(0, at)] = Number(line.slice(at + 1));
  }
  return out;
}

// Runs `body`, always stopping the server; exits 1 on failure.
export async function withServer(extraArgs, body, model) {
  const server = await startServer(extraArgs, model);
  // A stuck request or shutdown fails the test with the server's log, well before ctest's timeout.
  const watchdog = setTimeout(() => {
    console.error('the test did not finish within 150 s\n--- server log ---\n' + server.log());
    process.exit(1);
  }, 150000);
  watchdog.unref();
  let failed = false;
  try {
    await body(server);
  } catch (e) {
    failed = true;
    console.error(e);
    console.error('--- server log ---\n' + server.log());
  } finally {
    const alive = server.alive();
    const code = await server.stop();
    if (!alive) {
      console.error('the server died during the test');
      failed = true;
    } else if (code !== 0) {  // Ctrl-C stops it cleanly; a sanitizer report at exit does not
      console.error(`the server exited with ${code} after Ctrl-C:\n` + server.log());
      failed = true;
    }
  }
  process.exit(failed ? 1 : 0);
}
