// The upload page: Uppy's Dashboard sending files with tus to this gateway (or another one).
//
// Theory of operation:
// - The endpoint is the gateway's own collection URL (its --base-path, written into the page
//   by the gateway), unless `?endpoint=` names another gateway; that one must then allow
//   this page's origin (--cors-origins).
// - Resuming after a reload needs no storage of the file itself: tus-js-client keeps each
//   upload URL in localStorage under a fingerprint of the file (Uppy's file id: name, type,
//   size, last modification time, plus the endpoint). Adding the same file again finds that
//   URL, asks the gateway for its offset with HEAD and sends only the rest.
// - Once an upload finishes, the gateway's status endpoint tells what became of it: the
//   upload's status, and the sink's state once a sink reports one. The page asks a few times,
//   further apart each time, until the sink is done or gives up.
// - Uppy's status bar shows bytes and time left; the line above the Dashboard adds the speed,
//   over the last few seconds, counting only bytes sent since the page loaded (a resumed
//   upload's earlier bytes are not this page's speed).
// - `#token=...` in the address becomes `Authorization: Bearer ...` for gateways that guard
//   creation (--auth); the fragment is never sent to a server, so it stays out of logs.
//   The token goes only to the page's own origin and to the origins the gateway lists
//   (--page-token-origins, written into the page): anyone can send a user a link whose
//   `?endpoint=` is their own server. The check is made for each request, on the URL it
//   goes to, so an upload URL (a Location, or one remembered in localStorage) on another
//   origin gets no token either.

import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './upload-page.css'

// 0 first, so a 423 from a gateway that has just been asked to let go of the upload (a
// request cut off by the reload still holds it) costs no wait; then backing off, to ride out
// a gateway restart. Uppy also retries 503 (admission control) after Retry-After.
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000]
// Status polls after a finish: about a minute in all, enough for the directory sink (at
// once) and for a Notion drain of a few windows; the list says when the page stopped asking.
const STATUS_POLL_DELAYS_MS = [0, 500, 1000, 2000, 4000, 8000, 15000, 30000]
// Speed is measured over this window, sampled this often.
const SPEED_WINDOW_MS = 5000
const SPEED_SAMPLE_MS = 500
// Statuses after which nothing changes by itself (see protocol/state.py).
const FINAL_STATUSES = new Set(['drained', 'failed', 'terminated'])

function basePath() {
  const meta = document.querySelector('meta[name="tus-base-path"]')
  const value = meta?.getAttribute('content') ?? ''
  // Opened from disk (or a server that does not fill the template in): the default path.
  return value.startsWith('/') ? value : '/files/'
}

// Origins the token may go to, each as the browser writes it (`new URL(...).origin`), so
// comparing strings compares origins. An opaque origin ("null": a page opened from disk,
// a data: URL) matches nothing, since every opaque origin serializes the same way.
function tokenOrigins() {
  const meta = document.querySelector('meta[name="tus-token-origins"]')
  const listed = (meta?.getAttribute('content') ?? '').split(/\s+/).filter(Boolean)
  const origins = new Set()
  for (const entry of [window.location.origin, ...listed]) {
    const origin = originOf(entry)
    if (origin !== null) origins.add(origin)
  }
  return origins
}

// An absolute or page-relative URL, parsed; null when it does not parse.
function resolve(url) {
  try {
    return new URL(url, window.location.href)
  } catch {
    return null
  }
}

// The URL's origin; null when it does not parse or its origin is opaque.
function originOf(url) {
  const origin = resolve(url)?.origin
  return origin === undefined || origin === 'null' ? null : origin
}

function positiveInt(raw) {
  const n = Number(raw)
  return Number.isSafeInteger(n) && n > 0 ? n : undefined
}

// `?retryDelays=0,500` (milliseconds) replaces the default; an empty list makes the first
// error final, so the Dashboard's retry button is the way on.
function delays(raw) {
  if (raw === null) return undefined
  const list = raw.split(',').filter((part) => part.trim() !== '').map(Number)
  return list.every((n) => Number.isFinite(n) && n >= 0) ? list : undefined
}

// Options for a plugin, without the ones whose value is undefined. Uppy spreads the options
// it is given over its defaults, so a key that is present with the value undefined replaces
// the default instead of leaving it: a chunkSize of undefined (no `?chunkSize=`) made
// tus-js-client cut every PATCH body to nothing and send it again, forever.
function setOnly(options) {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined))
}

function bearerToken() {
  const fragment = new URLSearchParams(window.location.hash.slice(1))
  return fragment.get('token') || undefined
}

function formatBytes(n) {
  if (typeof n !== 'number') return ''
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit += 1
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`
}

function formatDuration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`
  const minutes = Math.floor(seconds / 60)
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`
}

function statusUrl(uploadUrl) {
  const url = new URL(uploadUrl)
  const id = url.pathname.split('/').filter(Boolean).pop() ?? ''
  return new URL(`/api/upload/status/${encodeURIComponent(id)}`, url).href
}

function badge(text, tone) {
  const span = document.createElement('span')
  span.className = `badge ${tone}`
  span.textContent = text
  return span
}

function tone(status) {
  if (status === 'drained' || status === 'complete') return 'ok'
  if (status === 'failed' || status === 'terminated') return 'bad'
  return 'busy'
}

// One list item per finished file, updated in place as the status changes. Everything shown
// comes from the network or the file's name, so it is set as text, never as markup.
function renderResult(item, { name, size, uploadUrl, report, note, done }) {
  item.replaceChildren()
  const link = document.createElement('a')
  link.className = 'name'
  link.href = uploadUrl
  link.textContent = name
  const sizeText = document.createElement('span')
  sizeText.className = 'size'
  sizeText.textContent = formatBytes(size)
  item.append(link, sizeText)
  item.dataset.uploadUrl = uploadUrl
  item.dataset.done = String(done)
  if (report) {
    item.dataset.status = report.status
    item.append(badge(`upload: ${report.status}`, tone(report.status)))
    if (report.sink) {
      item.dataset.sinkStatus = report.sink.status
      const where = report.sink.ref ? ` (${report.sink.ref})` : ''
      item.append(badge(`sink: ${report.sink.status}${where}`, tone(report.sink.status)))
      if (report.sink.error) item.append(badge(report.sink.error, 'bad'))
    } else {
      item.append(badge('sink: not yet', 'busy'))
    }
  }
  if (note) {
    const span = document.createElement('span')
    span.className = 'note'
    span.textContent = note
    item.append(span)
  }
}

function settled(report) {
  if (FINAL_STATUSES.has(report.status)) return true
  const sink = report.sink
  return sink != null && (sink.status === 'drained' ||
    (sink.status === 'failed' && !sink.will_retry))
}

async function fetchStatus(url) {
  const response = await fetch(url, { cache: 'no-store', credentials: 'omit' })
  if (!response.ok) throw new Error(`the status endpoint answered ${response.status}`)
  return response.json()
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms) })

async function watchStatus(file, uploadUrl) {
  const list = document.getElementById('results')
  document.getElementById('results-empty').hidden = true
  // A file added again after it finished (found by its fingerprint) replaces its old line.
  let item = list.querySelector(`li[data-file-id="${CSS.escape(file.id)}"]`)
  if (!item) {
    item = document.createElement('li')
    item.dataset.fileId = file.id
    list.append(item)
  }
  const shown = { name: file.name, size: file.size, uploadUrl }
  renderResult(item, { ...shown, note: 'all bytes stored; asking the gateway', done: false })
  let report = null
  let problem = null
  for (const delay of STATUS_POLL_DELAYS_MS) {
    await sleep(delay)
    try {
      report = await fetchStatus(statusUrl(uploadUrl))
      problem = null
    } catch (error) {
      problem = error
      continue
    }
    if (settled(report)) {
      renderResult(item, { ...shown, report, done: true })
      return
    }
    renderResult(item, { ...shown, report, note: 'waiting for the sink', done: false })
  }
  const note = problem
    ? `all bytes stored; no status (${problem.message})`
    : 'the sink is still working; reload the page later to see its result'
  renderResult(item, { ...shown, report, note, done: true })
}

const params = new URLSearchParams(window.location.search)
const wanted = params.get('endpoint') || basePath()
// One that does not parse is passed on as written: the upload then fails where the
// Dashboard shows it, and no token goes with it.
const endpoint = resolve(wanted)?.href ?? wanted
document.getElementById('endpoint').textContent = endpoint
const token = bearerToken()
const trusted = tokenOrigins()

// Called by tus-js-client before every request it sends (creation, HEAD, PATCH, DELETE).
function authorize(request) {
  if (token && trusted.has(originOf(request.getURL()))) {
    request.setHeader('Authorization', `Bearer ${token}`)
  }
}

const uppy = new Uppy({
  // A fixed id: it is part of every file's id and so of the tus fingerprint, which has to be
  // the same after a reload for the upload to resume.
  id: 'tus-gateway',
  autoProceed: false,
})
  .use(Dashboard, {
    inline: true,
    target: '#dashboard',
    width: '100%',
    height: 460,
    proudlyDisplayPoweredByUppy: false,
    // Progress details are speed and time left; the pause/resume and retry buttons stay on.
    hideProgressDetails: false,
    hidePauseResumeButton: false,
    hideRetryButton: false,
    showLinkToFileUploadResult: true,
    note: 'Drop files here or browse; several at once are fine.',
  })
  .use(Tus, setOnly({
    endpoint,
    // Unset (no or no valid `?chunkSize=`): tus-js-client's default, each file in one PATCH,
    // resumed from the stored offset if it is cut off. `?chunkSize=` bounds each PATCH, for
    // proxies with a body size limit.
    chunkSize: positiveInt(params.get('chunkSize')),
    retryDelays: delays(params.get('retryDelays')) ?? RETRY_DELAYS_MS,
    // Keep the URL after success: adding the same file again finds it finished and sends
    // nothing, rather than storing a second copy.
    removeFingerprintOnSuccess: false,
    limit: 4,
    onBeforeRequest: authorize,
  }))

uppy.on('upload-success', (file, response) => {
  const uploadUrl = response?.uploadURL ?? file?.tus?.uploadUrl
  if (file && uploadUrl) void watchStatus(file, uploadUrl)
})

// Bytes this page has sent, over all files: a file's first progress report after the page
// loaded is its starting point, so a resumed upload does not count the bytes it had before.
const lastProgress = new Map()
let sentBytes = 0
const samples = []

uppy.on('upload-progress', (file, progress) => {
  if (!file) return
  const previous = lastProgress.get(file.id)
  const now = progress.bytesUploaded ?? 0
  if (previous !== undefined && now > previous) sentBytes += now - previous
  lastProgress.set(file.id, now)
})

function showLiveProgress() {
  const line = document.getElementById('live')
  const at = performance.now()
  samples.push([at, sentBytes])
  while (samples.length > 1 && at - samples[0][0] > SPEED_WINDOW_MS) samples.shift()
  const uploading = uppy.getFiles().filter(
    (f) => f.progress.uploadStarted && !f.progress.uploadComplete && !f.error)
  if (uploading.length === 0) {
    line.hidden = true
    return
  }
  const [since, before] = samples[0]
  const speed = at > since ? ((sentBytes - before) * 1000) / (at - since) : 0
  const left = uploading.reduce(
    (sum, f) => sum + Math.max(0, (f.size ?? 0) - (f.progress.bytesUploaded || 0)), 0)
  const paused = uploading.every((f) => f.isPaused)
  let text = `${uploading.length} uploading · ${formatBytes(left)} to go · `
  if (paused) text += 'paused'
  else if (speed > 0) text += `${formatBytes(speed)}/s · about ${formatDuration(left / speed)} left`
  else text += 'waiting for the gateway'
  line.textContent = text
  line.dataset.speed = String(Math.round(speed))
  line.hidden = false
}

setInterval(showLiveProgress, SPEED_SAMPLE_MS)
