// Loads the Portcullis admin status page in Debian's chromium (headless, driven
// by playwright-core), as an operator would: with the admin token as the HTTP
// Basic password, on a desktop and on a narrow (phone) viewport. Reads the
// refusal counts it shows, follows the first recent request's trace link, and
// saves screenshots for humans to look at. Prints one JSON document on stdout.
//
//   node status_page.mjs ADMIN_URL ADMIN_TOKEN SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [adminUrl, token, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Containers and CI run as root, where chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
const report = { dialogs: 0, consoleErrors: [] };
try {
  const context = await browser.newContext({
    httpCredentials: { username: 'ops', password: token },
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  // A script the page was made to carry would open a dialog or log an error.
  page.on('dialog', async (d) => { report.dialogs += 1; await d.dismiss(); });
  page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(m.text()); });
  const response = await page.goto(adminUrl + '/', { waitUntil: 'load' });
  report.status = response.status();
  report.csp = response.headers()['content-security-policy'] || null;
  report.title = await page.title();
  report.refusals = await page.$$eval('#refusals tr[data-reason]', (rows) =>
    rows.map((r) => ({ reason: r.dataset.reason, count: Number(r.dataset.count) })));
  report.recent = await page.$$eval('#recent tr[data-request-id]', (rows) =>
    rows.map((r) => r.dataset.requestId));
  report.reload = await page.$eval('#reload', (p) => ({ result: p.dataset.result, text: p.parentElement.innerText }));
  report.issuers = await page.$$eval('#issuers tr[data-issuer]', (rows) => rows.map((r) => r.innerText));
  report.scriptElements = await page.$$eval('script', (s) => s.length);
  await page.screenshot({ path: `${shots}/status-page.png`, fullPage: true });

  // The same page on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 360, height: 740 });
  await page.reload({ waitUntil: 'load' });
  report.narrowOverflow = await page.evaluate(() =>
    document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await page.screenshot({ path: `${shots}/status-page-narrow.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.reload({ waitUntil: 'load' });

  // Follow the newest refused request's trace link.
  const link = page.locator('#recent a').first();
  report.followedId = (await link.innerText()).trim();
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), link.click()]);
  report.tracePath = new URL(page.url()).pathname;
  report.traceVerdict = await page.$eval('#verdict', (v) => v.dataset.reason).catch(() => null);
  report.traceSteps = await page.$$eval('tr[data-step]', (rows) =>
    rows.map((r) => ({ step: r.dataset.step, outcome: r.dataset.outcome })));
  await page.screenshot({ path: `${shots}/status-page-trace.png`, fullPage: true });

  // Without the token, the page is not served (asked outside the browser: a
  // headless browser answers a Basic challenge it cannot fill with an error).
  report.anonymousStatus = (await fetch(adminUrl + '/')).status;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
