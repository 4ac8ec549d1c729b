// Drive the upload page in headless Chromium (the system's, through playwright-core) and
// print one JSON report on the last line of stdout.
//
// Usage: node drive.mjs config.json, where the config holds
//   chromium            path of the browser binary (Debian's chromium)
//   pageUrl             the page, including ?endpoint= and ?chunkSize=
//   uploadOrigin        origin of the gateway the page uploads to (its requests are recorded)
//   files               paths of the files to upload
//   dropFiles           drop the files on the Dashboard (a synthetic drag and drop) instead
//                       of choosing them through its file input
//   patchDelayMs        hold each PATCH this long before it leaves the browser, so that the
//                       reload lands midway on a loopback link that would finish in moments
//   reloadAfterPatches  reload once this many PATCHes were answered (0: never)
//   pauseMs             after the reload, once two more PATCHes were answered, press the
//                       status bar's pause button, wait this long, then press it again (0: no)
//   failUntilRetry      fail every PATCH (connection reset) until the Dashboard offers its
//                       retry button, then let them through and press it
//   thenVisit           once the first page is done, open each of these in turn in the same
//                       tab, add its files, start them and wait until the page lists them
//                       finished: a list of { pageUrl, files }
//   maxPatches          give up as soon as the page has started more PATCHes than this, so
//                       a page that loops on PATCH fails at once, not at the timeout
//                       (absent: no limit)
//   waitForList         before adding files, wait until "Your uploads" has loaded and
//                       report what it shows then (openList)
//   clickMore           before adding files, press "More" and wait for the next page of the
//                       list (afterMore)
//   dropFirstStream     answer the first event stream request of each upload with a stream
//                       that ends at once after `retry: 200`, as a dropped connection
//                       would, so the page has to connect again
//   downloadDir         once done, press each listed row's Download link and save what the
//                       browser downloads here (downloads: uploadId, path)
//   screenshot          where to save the finished Dashboard (PNG)
//   timeoutMs           give up after this long
//
// The report: status ("ok" or "error"), error, requests (every request to uploadOrigin with
// the phase it started in: "first" before the reload, "second" after it, "paused" while
// paused, "retried" after the retry button), network (every request the page made, to any
// origin: phase, method, url, status, authorization, at: ms since the start),
// statusBarText (the Dashboard's progress line), liveText and speeds (the page's speed
// line), results (the rows of "Your uploads" for files this page sent, once all are done),
// listed (every row then), rowSamples (the rows this page sent, as seen while waiting:
// uploadId, status, percent, statusEvents, progressEvents, each distinct state once),
// openList, afterMore, downloads, fingerprints (tus keys in localStorage), consoleErrors,
// visits (for each page of thenVisit: pageUrl and results).

import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { chromium } from 'playwright-core'

const config = JSON.parse(await readFile(process.argv[2], 'utf8'))
const report = { status: 'error', error: null, requests: [], network: [], statusBarText: [],
  liveText: [], speeds: [], results: [], listed: [], rowSamples: [], openList: null,
  afterMore: null, downloads: [], fingerprints: [], consoleErrors: [], visits: [] }
const startedAt = Date.now()
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms) })
const deadline = Date.now() + config.timeoutMs
let phase = 'first'
let failing = Boolean(config.failUntilRetry)
let patchesStarted = 0

async function waitFor(what, predicate) {
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    if (config.maxPatches != null && patchesStarted > config.maxPatches) {
      throw new Error(`${patchesStarted} PATCHes started, more than the ${config.maxPatches} ` +
        `allowed, while waiting for ${what}`)
    }
    await sleep(25)
  }
}

// Drop the files on the Dashboard. A test cannot drag from the desktop, so the page builds
// the DataTransfer a real drop would carry and gets dragover and drop events with it.
async function dropFiles(page, paths) {
  const files = await Promise.all(paths.map(async (file) => (
    { name: path.basename(file), data: (await readFile(file)).toString('base64') })))
  const dataTransfer = await page.evaluateHandle((items) => {
    const transfer = new DataTransfer()
    for (const item of items) {
      const bytes = Uint8Array.from(atob(item.data), (c) => c.charCodeAt(0))
      transfer.items.add(new File([bytes], item.name, { type: 'application/octet-stream' }))
    }
    return transfer
  }, files)
  const target = page.locator('.uppy-Dashboard-inner')
  await target.dispatchEvent('dragover', { dataTransfer })
  await target.dispatchEvent('drop', { dataTransfer })
}

// Add the files through the Dashboard's own file input (what "browse" opens) or by a drop,
// and press its upload button, as a person would.
async function addFilesAndStart(page, files = config.files) {
  if (config.dropFiles) {
    await dropFiles(page, files)
  } else {
    await page.locator('input.uppy-Dashboard-input[type="file"]').first().setInputFiles(files)
  }
  await waitFor('the Dashboard to list the files', async () => (
    await page.locator('.uppy-Dashboard-Item').count()) === files.length)
  await page.locator('.uppy-StatusBar-actionBtn--upload').click()
}

// The rows of "Your uploads", as the page shows them.
const listedRows = async (page) => page.locator('#results li').evaluateAll((items) => (
  items.map((li) => ({ text: li.textContent, uploadId: li.dataset.uploadId ?? null,
    uploadUrl: li.dataset.uploadUrl ?? null, status: li.dataset.status ?? null,
    sinkStatus: li.dataset.sinkStatus ?? null, percent: li.dataset.percent ?? null,
    sent: li.dataset.sent === 'true', done: li.dataset.done === 'true',
    statusEvents: Number(li.dataset.statusEvents ?? 0),
    progressEvents: Number(li.dataset.progressEvents ?? 0),
    download: li.querySelector('a.download')?.href ?? null,
    rejected: li.querySelector('.rejected')?.textContent ?? null }))))
// Those of the files this page sent.
const finishedResults = async (page) => (await listedRows(page)).filter((row) => row.sent)
const sentDone = '#results li[data-sent="true"][data-done="true"]'

// Each distinct state a sent row went through, to show it changed while it was watched.
const seenStates = new Set()
async function sampleRows(page) {
  for (const row of await finishedResults(page).catch(() => [])) {
    const sample = { uploadId: row.uploadId, status: row.status, percent: row.percent,
      statusEvents: row.statusEvents, progressEvents: row.progressEvents }
    const key = JSON.stringify(sample)
    if (!seenStates.has(key)) {
      seenStates.add(key)
      report.rowSamples.push(sample)
    }
  }
}

const listLoaded = async (page) => (await page.locator('#results').getAttribute('data-loaded')) !== null

// The page draws a row again when its event stream ends, which can be just after the row
// shows its final state; a click that lands on the link being replaced starts nothing. So a
// click that starts no download within a few seconds is made again, on the link drawn since.
async function clickForDownload(page, link) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const [download] = await Promise.all([
        page.waitForEvent('download', { timeout: 8000 }), link.click()])
      return download
    } catch (error) {
      if (attempt >= 3) throw error
    }
  }
}

// Press each Download link and keep what the browser saved.
async function downloadAll(page) {
  const links = page.locator('#results li a.download')
  const total = await links.count()
  for (let i = 0; i < total; i += 1) {
    const item = links.nth(i)
    const uploadId = await item.evaluate((a) => a.closest('li').dataset.uploadId)
    const download = await clickForDownload(page, item)
    const saved = path.join(config.downloadDir, `${uploadId}.bin`)
    await download.saveAs(saved)
    report.downloads.push({ uploadId, path: saved, suggested: download.suggestedFilename() })
  }
}

async function visit(page, { pageUrl, files }) {
  // By way of a blank page, so an address that differs only in its fragment loads afresh.
  await page.goto('about:blank')
  await page.goto(pageUrl)
  await addFilesAndStart(page, files)
  await waitFor(`the files of ${pageUrl} to be reported finished`, async () => (
    await page.locator(sentDone).count()) >= files.length)
  report.visits.push({ pageUrl, results: await finishedResults(page) })
}

const answeredPatches = () => report.requests.filter(
  (r) => r.phase === phase && r.method === 'PATCH' && r.status === 204).length

async function sampleStatusBar(page) {
  const text = await page.locator('.uppy-StatusBar-statusSecondary').first()
    .textContent({ timeout: 1000 }).catch(() => null)
  if (text) report.statusBarText.push(text.trim())
  const live = page.locator('#live')
  if (await live.isVisible().catch(() => false)) {
    report.liveText.push((await live.textContent().catch(() => '')) ?? '')
    report.speeds.push(Number(await live.getAttribute('data-speed').catch(() => 0)))
  }
}

async function pauseAndResume(page) {
  const answeredBefore = answeredPatches()
  await waitFor('two PATCHes after the reload', async () => {
    await sampleStatusBar(page)
    return answeredPatches() >= answeredBefore + 2
  })
  const toggle = page.locator('.uppy-StatusBar [data-cy="togglePauseResume"]')
  await toggle.click()
  phase = 'paused'
  await sleep(config.pauseMs)
  await sampleStatusBar(page)
  phase = 'second'
  await toggle.click()
}

const browser = await chromium.launch({
  executablePath: config.chromium,
  headless: true,
  // Chromium refuses to start its sandbox as root (CI runs as root); /dev/shm is tiny in
  // many containers.
  args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage'],
})
let page = null
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } })
  page = await context.newPage()
  page.setDefaultTimeout(Math.min(30000, config.timeoutMs))
  page.on('console', (message) => {
    if (message.type() === 'error') report.consoleErrors.push(message.text())
  })
  page.on('pageerror', (error) => { report.consoleErrors.push(String(error)) })

  const fromUploadGateway = (url) => url.origin === config.uploadOrigin
  page.on('request', (request) => {
    const entry = { phase, method: request.method(), url: request.url(), status: null,
      authorization: request.headers().authorization ?? null, at: Date.now() - startedAt }
    report.network.push(entry)
    request.response().then((response) => {
      if (response) entry.status = response.status()
    }).catch(() => {})
  })
  const dropped = new Set()
  await page.route(fromUploadGateway, async (route) => {
    const url = route.request().url()
    if (config.dropFirstStream && new URL(url).pathname.startsWith('/api/upload/events/') &&
        !dropped.has(url)) {
      dropped.add(url)
      await route.fulfill({ status: 200, contentType: 'text/event-stream',
        body: 'retry: 200\n: dropped by the test\n\n' })
      return
    }
    if (route.request().method() === 'PATCH' && failing) {
      await route.abort('connectionreset')
      return
    }
    if (route.request().method() === 'PATCH' && config.patchDelayMs > 0) {
      await sleep(config.patchDelayMs)
    }
    // The reload may have cancelled the request meanwhile.
    await route.continue().catch(() => {})
  })
  // The phase a request belongs to is the one it started in.
  const started = new WeakMap()
  page.on('request', (request) => {
    started.set(request, phase)
    if (request.method() === 'PATCH') patchesStarted += 1
  })
  const record = async (request, failure) => {
    if (!fromUploadGateway(new URL(request.url()))) return
    const entry = { phase: started.get(request) ?? phase, method: request.method(), url: request.url(), status: null,
      requestOffset: null, responseOffset: null, location: null, failure }
    report.requests.push(entry)
    const headers = await request.allHeaders().catch(() => ({}))
    entry.requestOffset = headers['upload-offset'] ?? null
    const response = failure ? null : await request.response().catch(() => null)
    if (response) {
      entry.status = response.status()
      const answer = await response.allHeaders().catch(() => ({}))
      entry.responseOffset = answer['upload-offset'] ?? null
      entry.location = answer.location ?? null
    }
  }
  page.on('requestfinished', (request) => { void record(request, null) })
  page.on('requestfailed', (request) => {
    void record(request, request.failure()?.errorText ?? 'failed')
  })

  await page.goto(config.pageUrl)
  if (config.waitForList) {
    await waitFor('the list of uploads', () => listLoaded(page))
    report.openList = await listedRows(page)
  }
  if (config.clickMore) {
    const before = await page.locator('#results li').count()
    await page.locator('#more').click()
    await waitFor('the next page of the list', async () => (
      await page.locator('#results li').count()) > before)
    report.afterMore = await listedRows(page)
  }
  await addFilesAndStart(page)
  if (failing) {
    const retry = page.locator('.uppy-StatusBar-actionBtn--retry')
    await retry.waitFor({ state: 'visible' })
    await page.screenshot({ path: config.screenshot.replace(/\.png$/, '-error.png') })
    failing = false
    phase = 'retried'
    await retry.click()
  }
  if (config.reloadAfterPatches > 0) {
    await waitFor(`${config.reloadAfterPatches} answered PATCHes`, async () => {
      await sampleStatusBar(page)
      return answeredPatches() >= config.reloadAfterPatches
    })
    // The old document runs on until the new one commits, and a request it starts in that
    // gap is still the first page's: the phase changes with the commit.
    const committed = (frame) => {
      if (frame !== page.mainFrame()) return
      phase = 'second'
      page.off('framenavigated', committed)
    }
    page.on('framenavigated', committed)
    await page.reload()
    await addFilesAndStart(page)
    if (config.pauseMs > 0) await pauseAndResume(page)
  }
  await waitFor('every file to be reported finished', async () => {
    await sampleStatusBar(page)
    await sampleRows(page)
    const done = await page.locator(sentDone).count()
    return done >= config.files.length
  })
  await page.screenshot({ path: config.screenshot, fullPage: true })
  report.results = await finishedResults(page)
  report.listed = await listedRows(page)
  if (config.downloadDir) await downloadAll(page)
  report.fingerprints = await page.evaluate(
    () => Object.keys(window.localStorage).filter((key) => key.startsWith('tus::')))
  for (const next of config.thenVisit ?? []) await visit(page, next)
  report.status = 'ok'
} catch (error) {
  report.error = String(error?.stack ?? error)
  // What the page looked like when it went wrong is the first thing one wants to see.
  await page?.screenshot({ path: config.screenshot, fullPage: true }).catch(() => {})
} finally {
  await browser.close()
}
console.log(JSON.stringify(report))
