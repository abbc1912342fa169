// Chromium: the same harness in a headless page (Debian's chromium via playwright-core).
// node chromium_runner.cjs URLS ADDRESSES; prints the page's lines; runs until killed.
// Request lines on stdin go to the page's harness (see harness.mjs).
// The page comes from a small HTTP server on 127.0.0.1 (Chromium lets pages reach
// loopback WebSockets only from a loopback origin), serving files of the tree.
const fs = require('fs');
const readline = require('readline');
const http = require('http');
const path = require('path');
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const FILES = {
  '/timefast-client.js': path.join(__dirname, '../../clients/js/timefast-client.js'),
  '/harness.mjs': path.join(__dirname, 'harness.mjs'),
};
const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import { WalletClient } from '/timefast-client.js';
import { answer, run } from '/harness.mjs';
const print = (line) => console.log('EV ' + line);
const client = run(WalletClient, ${JSON.stringify(process.argv[2].split(','))}, ${JSON.stringify(process.argv[3].split(','))}, print);
window.answerLine = (line) => answer(client, line, print).catch((e) => console.log('ERR ' + e));
</script>`;

const server = http.createServer((req, res) => {
  const file = FILES[req.url];
  res.writeHead(200, { 'Content-Type': file ? 'text/javascript' : 'text/html' });
  res.end(file ? fs.readFileSync(file) : PAGE);
});

server.listen(0, '127.0.0.1', async () => {
  try {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
             '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    const page = await browser.newPage();
    page.on('console', (msg) => {
      const t = msg.text();
      if (t.startsWith('EV ')) process.stdout.write(t.slice(3) + '\n');
      else if (t.startsWith('ERR ')) process.stderr.write(t + '\n');
    });
    page.on('pageerror', (e) => process.stderr.write(`page error: ${e}\n`));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.waitForFunction(() => typeof window.answerLine === 'function');
    for await (const line of readline.createInterface({ input: process.stdin })) {
      // Not awaited: a request may wait for a reconnection while the next one goes.
      page.evaluate((l) => { window.answerLine(l); }, line)
        .catch((e) => process.stderr.write(`evaluate: ${e}\n`));
    }
  } catch (e) {
    console.error(e);
    process.exit(1);
  }
});
