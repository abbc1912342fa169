// Loads the node's live page (GET / on the wallet port) in headless Chromium (Debian's,
// via playwright-core).  argv: page URL, screenshot path.  Protocol on stdio: prints
// READY once the page is live; then reads commands, one a line: "TX txid" waits until
// the page shows that transaction in the address's feed and in the table of
// transactions in flight, "BLOCK height" until it shows that block, each answered
// SHOWN; "HIST txid status" waits until the address's history table lists that
// transaction with that status, "ROWS n" until the table has n rows, each answered
// SHOWN; "MORE" clicks the history's "more" button and answers CLICKED; "ORDER"
// prints the txids of the history table's rows as JSON; "SHOT" saves the screenshot
// and prints the page's text as JSON.  Exits by itself (at SHOT, or when stdin ends).
const readline = require('readline');
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const timer = setTimeout(async () => { console.log('TIMEOUT'); await browser.close(); process.exit(2); }, 90000);
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('pageerror', (e) => console.error(`page error: ${e}`));
  await page.goto(process.argv[2]);
  await page.waitForSelector('#link.on');
  console.log('READY');
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [cmd, arg] = line.trim().split(' ');
    if (cmd === 'TX') {  // in the address's feed and in the table of transactions in flight
      await page.waitForSelector(`#events li[data-txid="${arg}"]`);
      await page.waitForSelector(`#pending tr[data-txid="${arg}"]`);
    } else if (cmd === 'BLOCK') {  // in the block feed and as the height
      await page.waitForSelector(`#blocks li[data-height="${arg}"]`);
      await page.waitForFunction((h) => document.getElementById('height').textContent === h, arg);
    } else if (cmd === 'HIST') {
      const status = line.trim().split(' ')[2];
      await page.waitForSelector(`#history tr[data-txid="${arg}"][data-status="${status}"]`);
    } else if (cmd === 'ROWS') {
      await page.waitForFunction((n) => document.querySelectorAll('#history tbody tr[data-txid]').length === n, Number(arg));
    } else if (cmd === 'MORE') {
      await page.click('#more');
      console.log('CLICKED');
      continue;
    } else if (cmd === 'ORDER') {
      console.log(JSON.stringify(await page.$$eval('#history tbody tr[data-txid]', (rows) => rows.map((r) => r.dataset.txid))));
      continue;
    } else if (cmd === 'SHOT') {
      await page.screenshot({ path: process.argv[3], fullPage: true });
      console.log(JSON.stringify(await page.evaluate(() => document.body.innerText)));
      break;
    }
    console.log('SHOWN');
  }
  clearTimeout(timer);
  await browser.close();
  process.exit(0);
})().catch((e) => { console.log('ERROR ' + e); process.exit(1); });
