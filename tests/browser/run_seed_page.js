// Loads the seed's browser page in headless Chromium (Debian's, via playwright-core)
// and reports on stdout: READY once the page got its first message, FINALIZED when
// the page logged the seed's "Transaction finalized" line.  Exits by itself.
const { chromium } = require(process.env.PLAYWRIGHT_CORE || 'playwright-core');

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const timer = setTimeout(async () => { console.log('TIMEOUT'); await browser.close(); process.exit(2); }, 60000);
  const page = await browser.newPage();
  let ready = false;
  page.on('console', async (msg) => {
    const text = msg.text();
    if (text.startsWith('Received:') && !ready) { ready = true; console.log('READY'); }
    if (text.includes('✅ Transaction finalized instantly!')) {
      console.log('FINALIZED');
      clearTimeout(timer);
      await browser.close();
      process.exit(0);
    }
  });
  await page.goto(process.argv[2]);
})().catch((e) => { console.log('ERROR ' + e); process.exit(1); });
