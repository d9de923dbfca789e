/**
 * Bull Board in a real browser (issue 13, must-show "An end-to-end browser
 * test"): headless Chromium (Debian's `chromium`, driven by playwright-core,
 * which ships no browser of its own) signs in through the login form at
 * /admin/login with an API token — no header or cookie injected — and sees the
 * three queues and a completed push (the push's job in the assemble queue's
 * completed list). Screenshots go to test-output/board-browser/ (gitignored),
 * and on a failure the page's screenshot and HTML (failed-*.png, failed-*.html).
 * The same page without signing in is refused: a browser is sent to the login
 * page, an API client gets 401.
 *
 * Offline: Bull Board's page links a Google Fonts stylesheet; every request
 * that leaves 127.0.0.1 is aborted (and listed), so the board renders with its
 * fallback fonts and the test never waits on the network.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { copyHello, startLocalStack, waitForPush, type LocalStack } from './stack';

/** Debian's chromium package; FERRY_CHROMIUM points elsewhere. */
const CHROMIUM = process.env.FERRY_CHROMIUM ?? '/usr/bin/chromium';
/**
 * Flags for a container: no user namespaces for the sandbox when run as root,
 * no GPU, /dev/shm often 64 MB, and nothing that phones home (component
 * updates, field trials, sync, metrics) so it starts the same offline.
 */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--headless=new',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--metrics-recording-only',
  '--disable-features=Translate,MediaRouter,OptimizationHints',
];
const OUT = join(__dirname, '..', '..', 'test-output', 'board-browser');
const ADMIN_TOKEN = 'board-admin-tok-5c1e9a7d3f';

describe('e2e: Bull Board in headless Chromium, behind its login form', function () {
  this.timeout(180_000);
  let local: LocalStack;
  let browser: Browser;
  let base: string;
  let pushId: string;
  const external: string[] = [];
  /** The page of the running test: on a failure its screenshot and HTML are kept. */
  let current: Page | undefined;

  /** A fresh browser context (no cookies) that aborts every request leaving 127.0.0.1. */
  async function newContext(): Promise<BrowserContext> {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    await context.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === '127.0.0.1') return route.continue();
      external.push(url.href);
      return route.abort('internetdisconnected');
    });
    return context;
  }

  async function screenshot(page: Page, name: string): Promise<string> {
    const path = join(OUT, name);
    await page.screenshot({ path, fullPage: true });
    assert.ok(statSync(path).size > 1000, `${path} is written`);
    return path;
  }

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      // Under CI a missing browser is a broken install (scripts/install-system-deps.sh), not a skip.
      if (process.env.CI === 'true') {
        throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
      }
      this.skip();
    }
    mkdirSync(OUT, { recursive: true });
    local = await startLocalStack('e2e-board-browser', {
      env: { FERRY_ADMIN_TOKENS: `ops=${ADMIN_TOKEN}@*` },
    });
    base = local.stack.api.url;
    // A real push, submitted with the token as any API client does, so the
    // board has a completed job to show.
    copyHello(local.root);
    const res = await fetch(`${base}/v1/pushes`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({
        source: `dir:${join(local.root, 'hello')}`,
        target: `${local.registry.host}/demo/board:1.0`,
      }),
    });
    const body = (await res.json()) as { id?: string };
    assert.equal(res.status, 202, JSON.stringify(body));
    pushId = body.id!;
    const state = await waitForPush(local.stack.ctx, pushId);
    assert.equal(state.status, 'succeeded', JSON.stringify(state.error));

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60_000,
    });
  });

  afterEach(async function () {
    if (this.currentTest?.state === 'failed' && current && !current.isClosed()) {
      const name = `failed-${this.currentTest.title.replace(/[^A-Za-z0-9]+/g, '-').slice(0, 60)}`;
      await current
        .screenshot({ path: join(OUT, `${name}.png`), fullPage: true })
        .catch(() => undefined);
      writeFileSync(join(OUT, `${name}.html`), await current.content().catch(String));
    }
    await current?.context().close();
    current = undefined;
  });

  after(async () => {
    await browser?.close().catch(() => undefined);
    await local?.stop();
  });

  it('without signing in: a browser is sent to the login form, an API client gets 401', async () => {
    const context = await newContext();
    const page = (current = await context.newPage());
    const res = await page.goto(`${base}/admin/queues`);
    assert.equal(new URL(page.url()).pathname, '/admin/login');
    assert.equal(res?.status(), 200);
    assert.equal(await page.locator('form[action="/admin/login"] input#token').count(), 1);
    assert.equal(await page.getByText('assemble').count(), 0, 'no queue shown before sign-in');
    // The board's own JSON, fetched by the page itself without a session: refused.
    const api = await page.evaluate(async () => {
      const r = await fetch('/admin/queues/api/queues');
      return r.status;
    });
    assert.equal(api, 401);
    // A wrong token through the form: the form again, with the reason, and no cookie.
    await page.locator('#token').fill('not-a-token');
    await Promise.all([
      page.waitForResponse((r) => r.url().endsWith('/admin/login') && r.status() === 401),
      page.locator('input[type="submit"]').click(),
    ]);
    await page.getByText('That token is not valid.').waitFor();
    assert.deepEqual(await context.cookies(), []);
    await screenshot(page, 'refused.png');

    // An API client (no Accept: text/html): 401 with the Bearer challenge, no redirect.
    for (const path of ['/admin/queues', '/admin/queues/api/queues']) {
      const res = await fetch(`${base}${path}`, { redirect: 'manual' });
      assert.equal(res.status, 401, path);
      assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer /, path);
      assert.equal(
        ((await res.json()) as { error: { code: string } }).error.code,
        'FERRY_UNAUTHORIZED',
      );
    }
    // What the browser got before following it: a 303 to the login page.
    const html = await fetch(`${base}/admin/queues`, {
      redirect: 'manual',
      headers: { accept: 'text/html' },
    });
    assert.equal(html.status, 303);
    assert.equal(html.headers.get('location'), '/admin/login');
  });

  it('signs in through the form and shows the three queues and the completed push', async () => {
    const context = await newContext();
    const page = (current = await context.newPage());
    await page.goto(`${base}/admin/queues`);
    assert.equal(new URL(page.url()).pathname, '/admin/login');
    await screenshot(page, 'login.png');
    await page.locator('#token').fill(ADMIN_TOKEN);
    await Promise.all([
      page.waitForURL((u) => u.pathname.startsWith('/admin/queues')),
      page.locator('input[type="submit"]').click(),
    ]);

    // The session is the server's HttpOnly cookie, scoped to /admin, without the token in it.
    const cookies = await context.cookies();
    assert.equal(cookies.length, 1, JSON.stringify(cookies));
    assert.equal(cookies[0]!.name, 'ferry_session');
    assert.equal(cookies[0]!.httpOnly, true);
    assert.equal(cookies[0]!.path, '/admin');
    assert.equal(cookies[0]!.sameSite, 'Strict');
    assert.ok(!cookies[0]!.value.includes(ADMIN_TOKEN));
    assert.equal(await page.evaluate('document.cookie'), '', 'not readable from script');

    // The overview: Bull Board's own UI, the queues in its menu and one card each in the main view.
    for (const name of ['lookup', 'upload', 'assemble']) {
      await page.locator(`nav a[href$="/queue/${name}"]`).waitFor({ timeout: 30_000 });
      await page.locator(`main a[href$="/queue/${name}"]`).waitFor({ timeout: 30_000 });
    }
    assert.equal(await page.getByText('Ferry').first().isVisible(), true, 'board title');
    await screenshot(page, 'queues.png');

    // Into the assemble queue, then its Completed tab, as a user clicks.
    await page.locator('a[href$="/queue/assemble"]').first().click();
    await page.waitForURL((u) => u.pathname.endsWith('/queue/assemble'));
    const completedTab = page.locator('main a[href$="/queue/assemble?status=completed"]');
    assert.equal(await completedTab.locator('[class^="badge"]').innerText(), '1', 'one completed');
    await completedTab.click();
    await page.waitForURL((u) => u.searchParams.get('status') === 'completed');
    const job = page.getByText(`push-${pushId}`).first();
    await job.waitFor({ timeout: 30_000 });
    assert.equal(await job.isVisible(), true);
    await screenshot(page, 'assemble-completed.png');
  });

  after(() => {
    // Everything the page asked of the outside world (aborted): only Bull Board's web font.
    for (const url of external) {
      assert.match(url, /^https:\/\/fonts\.(googleapis|gstatic)\.com\//, url);
    }
  });
});
