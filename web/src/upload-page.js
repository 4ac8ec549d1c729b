// The upload page: Uppy's Dashboard sending files with tus to this gateway (or another one),
// and the list of the user's uploads as that gateway knows them, kept live.
//
// Theory of operation:
// - The endpoint is the gateway's own collection URL (its --base-path, written into the page
//   by the gateway), unless `?endpoint=` names another gateway; that one must then allow
//   this page's origin (--cors-origins).
// - Resuming after a reload needs no storage of the file itself: tus-js-client keeps each
//   upload URL in localStorage under a fingerprint of the file (Uppy's file id: name, type,
//   size, last modification time, plus the endpoint). Adding the same file again finds that
//   URL, asks the gateway for its offset with HEAD and sends only the rest.
// - "Your uploads" is the gateway's list (GET /api/uploads on the endpoint's origin: the
//   caller's uploads, newest first, a page at a time behind the "More" button), loaded once
//   when the page opens; an upload this page starts goes to the top as soon as it starts.
// - Rows change through the gateway's event streams (GET /api/upload/events/<id>), not by
//   asking again: the first event is the upload's status, then progress while bytes arrive
//   and a status at each change, until a final status ends the stream. The streams are
//   read with fetch(), since an EventSource cannot send the Authorization header (sse.js).
//   A browser opens about 6 connections per host over HTTP/1.1 and the uploads need them,
//   so at most MAX_STREAMS are open: the uploads this page is sending first, then the other
//   unfinished ones, newest first; the rest show what the list said.
// - Uppy's status bar shows bytes and time left; the line above the Dashboard adds the speed,
//   over the last few seconds, counting only bytes sent since the page loaded (a resumed
//   upload's earlier bytes are not this page's speed).
// - `#token=...` in the address becomes `Authorization: Bearer ...` for gateways that guard
//   their uploads (--auth); the fragment is never sent to a server, so it stays out of logs.
//   The token goes only to the page's own origin and to the origins the gateway lists
//   (--page-token-origins, written into the page): anyone can send a user a link whose
//   `?endpoint=` is their own server. The check is made for each request, on the URL it
//   goes to, so an upload URL (a Location, or one remembered in localStorage) on another
//   origin gets no token either, nor does the list or an event stream there.
// - Everything shown that came from a server is set as text, never as markup; a link is
//   followed only when it is http(s).

import Uppy from '@uppy/core'
import Dashboard from '@uppy/dashboard'
import Tus from '@uppy/tus'

import { readEvents } from './sse.js'

import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './upload-page.css'

// 0 first, so a 423 from a gateway that has just been asked to let go of the upload (a
// request cut off by the reload still holds it) costs no wait; then backing off, to ride out
// a gateway restart. Uppy also retries 503 (admission control) after Retry-After.
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000]
// Speed is measured over this window, sampled this often.
const SPEED_WINDOW_MS = 5000
const SPEED_SAMPLE_MS = 500
// Uploads per page of the list ("More" asks for the next).
const PAGE_SIZE = 20
// Event streams open at once: a browser keeps about 6 connections per host over HTTP/1.1,
// and the uploads need most of them.
const MAX_STREAMS = 3
// Before the gateway's `retry` says otherwise; failed attempts back off up to the maximum.
const FIRST_RECONNECT_MS = 1000
const MAX_RECONNECT_MS = 30000
// Statuses after which nothing changes by itself (protocol/state.py), as the gateway's
// event stream decides when to end (gateway/events.py); a failure is final too unless the
// sink will retry.
const FINAL_STATUSES = new Set(['drained', 'rejected', 'terminated'])

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

function badge(text, tone) {
  const span = document.createElement('span')
  span.className = `badge ${tone}`
  span.textContent = text
  return span
}

function tone(status, willRetry = false) {
  if (status === 'drained' || status === 'complete') return 'ok'
  if (status === 'rejected' || status === 'terminated') return 'bad'
  if (status === 'failed') return willRetry ? 'busy' : 'bad'
  return 'busy'
}

// Whether nothing more will happen to the upload by itself: the gateway ends its event
// stream then (gateway/events.py, is_final).
function isFinal(status, willRetry) {
  if (FINAL_STATUSES.has(status)) return true
  return status === 'failed' && !willRetry
}

// Values from a server are taken only with the type they should have.
const asText = (value) => (typeof value === 'string' ? value : null)
const asNumber = (value) => (typeof value === 'number' && Number.isFinite(value) ? value : null)

// The upload id: the last segment of its tus URL, as the gateway's list names it.
function idOf(uploadUrl) {
  const last = resolve(uploadUrl)?.pathname.split('/').filter(Boolean).pop() ?? ''
  try {
    return decodeURIComponent(last)
  } catch {
    return last
  }
}

// A link from a server, resolved against where it came from; only http(s) is followed.
function link(value, base) {
  if (typeof value !== 'string') return null
  let url
  try {
    url = new URL(value, base)
  } catch {
    return null
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null
}

// Resolves after ms, or at once when signal aborts.
const sleep = (ms, signal) => new Promise((done) => {
  const wake = () => {
    clearTimeout(timer)
    signal?.removeEventListener('abort', wake)
    done()
  }
  const timer = setTimeout(wake, ms)
  signal?.addEventListener('abort', wake, { once: true })
})

function delayFrom(retryAfter) {
  const seconds = Number(retryAfter)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 0
}

const params = new URLSearchParams(window.location.search)
const wanted = params.get('endpoint') || basePath()
// One that does not parse is passed on as written: the upload then fails where the
// Dashboard shows it, and no token goes with it.
const endpoint = resolve(wanted)?.href ?? wanted
document.getElementById('endpoint').textContent = endpoint
const token = bearerToken()
const trusted = tokenOrigins()
// The gateway's own API lives at the root of the endpoint's origin.
const apiOrigin = originOf(endpoint)
// Aborted when the page goes away: every list request and event stream stops with it.
let leaving = new AbortController()

// Called by tus-js-client before every request it sends (creation, HEAD, PATCH, DELETE).
function authorize(request) {
  if (token && trusted.has(originOf(request.getURL()))) {
    request.setHeader('Authorization', `Bearer ${token}`)
  }
}

// Options for fetch() to the gateway's API, with the token where it may go. Cookies go
// only to the page's own origin (fetch's default), as the gateway allows no credentials
// from other origins.
function apiInit(url, { headers = {}, signal } = {}) {
  const all = { ...headers }
  if (token && trusted.has(originOf(url))) all.Authorization = `Bearer ${token}`
  return { cache: 'no-store', headers: all, signal: signal ?? leaving.signal }
}

// --- Your uploads -------------------------------------------------------------------------

const list = document.getElementById('results')
const listState = document.getElementById('results-state')
const moreButton = document.getElementById('more')
// Rows by upload id; rows of files this page started before their upload URL is known, by
// Uppy's file id.
const rows = new Map()
const pendingRows = new Map()
// Each Uppy file's upload id, once known.
const fileUploads = new Map()
let listed = 0 // uploads the gateway's list gave so far, in its order
let started = 0 // uploads this page started or resumed, in order
let nextCursor = null
let listLoaded = false
let streaming = 0

function newRow(fields) {
  const row = {
    id: null, name: null, size: null, status: null, offset: null, bytesReceived: null,
    percent: null, speed: null, sink: null, rejected: null, uploadUrl: null,
    eventsUrl: null, downloadUrl: null,
    // Order in the list (highest first) and, for the page's own, the order it sent them.
    rank: 0, sent: false, sentOrder: 0,
    // final: the gateway says nothing more will happen; heard: a stream's status arrived,
    // which the list (possibly older) must not overwrite.
    final: false, gone: false, heard: false, streamFailed: false,
    statusEvents: 0, progressEvents: 0, note: null, stream: null,
    li: document.createElement('li'),
    ...fields,
  }
  return row
}

// Newest first: rows this page started (in the order it started them) above the list's.
function placeRows() {
  const all = [...new Set([...pendingRows.values(), ...rows.values()])]
  all.sort((a, b) => b.rank - a.rank)
  list.replaceChildren(...all.map((row) => row.li))
  showListState()
}

function showListState() {
  const empty = list.children.length === 0
  if (!listLoaded) return
  listState.hidden = !empty
  if (empty) listState.textContent = 'None yet.'
}

// A list item or a status event: both describe the upload, with a few names apart.
function takeServerView(row, data, base) {
  row.name = asText(data.name) ?? asText(data.filename) ?? row.name
  row.size = asNumber(data.size) ?? asNumber(data.length) ?? row.size
  row.status = asText(data.status) ?? row.status
  row.offset = asNumber(data.offset) ?? row.offset
  row.bytesReceived = asNumber(data.bytes_received) ?? row.bytesReceived
  row.percent = asNumber(data.percent) ?? row.percent
  row.speed = asNumber(data.speed_bytes_per_s)
  const sink = data.sink
  row.sink = sink && typeof sink === 'object' ? {
    status: asText(sink.status), ref: asText(sink.ref), error: asText(sink.error),
    willRetry: sink.will_retry === true,
  } : null
  row.rejected = asText(data.rejected)
  const links = data.links && typeof data.links === 'object' ? data.links : {}
  row.uploadUrl = link(links.upload, base) ?? row.uploadUrl
  row.eventsUrl = link(links.events, base) ?? row.eventsUrl
  row.downloadUrl = link(links.download, base)
  row.final = isFinal(row.status, row.sink?.willRetry ?? false)
}

function takeProgress(row, data) {
  row.offset = asNumber(data.offset) ?? row.offset
  row.bytesReceived = asNumber(data.bytes_received) ?? row.bytesReceived
  row.size = asNumber(data.length) ?? row.size
  row.percent = asNumber(data.percent) ?? row.percent
  row.speed = asNumber(data.speed_bytes_per_s)
}

function render(row) {
  const li = row.li
  li.replaceChildren()
  const name = document.createElement('span')
  name.className = 'name'
  name.textContent = row.name ?? '(no name)'
  const size = document.createElement('span')
  size.className = 'size'
  size.textContent = row.size === null ? 'size not known yet' : formatBytes(row.size)
  li.append(name, size)
  const receiving = row.status === null || row.status === 'created' || row.status === 'receiving'
  if (receiving && !row.gone) {
    const percent = row.percent ?? 0
    const bar = document.createElement('progress')
    bar.max = 100
    bar.value = percent
    bar.textContent = `${percent}%`
    const figure = document.createElement('span')
    figure.className = 'percent'
    figure.textContent = row.speed ? `${percent}% · ${formatBytes(row.speed)}/s` : `${percent}%`
    li.append(bar, figure)
  }
  if (row.status) li.append(badge(`upload: ${row.status}`, tone(row.status, row.sink?.willRetry)))
  if (row.rejected !== null || row.status === 'rejected') {
    const why = document.createElement('span')
    why.className = 'rejected'
    why.textContent = `Rejected: ${row.rejected ?? 'the gateway gave no reason'}`
    li.append(why)
  } else if (row.sink) {
    const where = row.sink.ref ? ` (${row.sink.ref})` : ''
    li.append(badge(`sink: ${row.sink.status}${where}`, tone(row.sink.status, row.sink.willRetry)))
    if (row.sink.error) li.append(badge(row.sink.error, row.sink.willRetry ? 'busy' : 'bad'))
    if (row.sink.status === 'failed' && row.sink.willRetry) li.append(badge('will retry', 'busy'))
  } else if (row.status === 'complete' || row.status === 'draining') {
    li.append(badge('sink: not yet', 'busy'))
  }
  if (row.downloadUrl) {
    const download = document.createElement('a')
    download.className = 'download'
    download.href = row.downloadUrl
    // The gateway names the file (Content-Disposition); same-origin links save it.
    download.setAttribute('download', '')
    download.rel = 'noopener'
    download.textContent = 'Download'
    li.append(download)
  }
  const note = row.gone ? 'removed from the gateway' : row.note
  if (note) {
    const span = document.createElement('span')
    span.className = 'note'
    span.textContent = note
    li.append(span)
  }
  const set = (key, value) => {
    if (value === null || value === undefined) delete li.dataset[key]
    else li.dataset[key] = String(value)
  }
  set('uploadId', row.id)
  set('uploadUrl', row.uploadUrl)
  set('status', row.status)
  set('sinkStatus', row.sink?.status)
  set('percent', row.percent)
  set('sent', row.sent)
  set('done', row.final || row.gone)
  set('statusEvents', row.statusEvents)
  set('progressEvents', row.progressEvents)
}

// The list's next page, merged into the rows. A row an event stream already updated keeps
// what the stream said: the list may be older.
async function loadPage() {
  if (apiOrigin === null) {
    list.dataset.loaded = 'error'
    listState.textContent = 'The list of uploads is not available for this endpoint.'
    return
  }
  const url = new URL('/api/uploads', apiOrigin)
  url.searchParams.set('limit', String(PAGE_SIZE))
  if (nextCursor !== null) url.searchParams.set('cursor', nextCursor)
  moreButton.disabled = true
  try {
    const response = await fetch(url.href, apiInit(url.href,
      { headers: { Accept: 'application/json' } }))
    if (!response.ok) {
      const why = response.status === 401 || response.status === 403
        ? 'the gateway wants credentials: open the page with #token=...'
        : `the gateway answered ${response.status}`
      throw new Error(why)
    }
    const body = await response.json()
    if (!body || !Array.isArray(body.uploads)) throw new Error('the gateway sent no list')
    for (const item of body.uploads) {
      const id = item && typeof item === 'object' ? asText(item.id) : null
      if (id === null) continue
      listed += 1
      let row = rows.get(id)
      if (!row) {
        row = newRow({ id, rank: -listed })
        rows.set(id, row)
      }
      if (!row.heard) takeServerView(row, item, url.href)
      render(row)
    }
    nextCursor = asText(body.next)
    listLoaded = true
    list.dataset.loaded = 'true'
    placeRows()
    moreButton.hidden = nextCursor === null
  } catch (error) {
    if (leaving.signal.aborted) return
    list.dataset.loaded = 'error'
    listState.hidden = false
    listState.textContent = `The list of uploads could not be loaded (${error.message}).`
  } finally {
    moreButton.disabled = false
  }
  schedule()
}

moreButton.addEventListener('click', () => { void loadPage() })

// Which rows get an event stream: those this page sends, newest first, then the other
// unfinished ones, newest first, up to MAX_STREAMS. A row that drops out of that set (this
// page started another upload) has its stream closed and shows its last state.
function schedule() {
  if (leaving.signal.aborted) return
  const candidates = [...rows.values()].filter(
    (row) => row.eventsUrl && !row.final && !row.gone && !row.streamFailed)
  candidates.sort((a, b) => (b.sent - a.sent) || (b.sentOrder - a.sentOrder) ||
    (b.rank - a.rank))
  const chosen = new Set(candidates.slice(0, MAX_STREAMS))
  for (const row of rows.values()) {
    if (row.stream && !chosen.has(row)) row.stream.abort()
  }
  for (const row of chosen) {
    if (!row.stream && streaming < MAX_STREAMS) void follow(row)
  }
}

// One upload's event stream, reconnected after a drop (at the gateway's `retry`, backing
// off while attempts fail) until its status is final, it is gone, or the row is dropped.
async function follow(row) {
  const stream = new AbortController()
  const stop = () => { stream.abort() }
  leaving.signal.addEventListener('abort', stop, { once: true })
  row.stream = stream
  streaming += 1
  let retryMs = FIRST_RECONNECT_MS
  let failures = 0
  try {
    while (!stream.signal.aborted && !row.final && !row.gone) {
      let heard = false
      try {
        const url = row.eventsUrl
        const response = await fetch(url, apiInit(url, {
          headers: { Accept: 'text/event-stream' }, signal: stream.signal }))
        if (response.status === 204) {
          // The gateway's way of saying the stream has nothing more to tell.
          row.final = true
          break
        }
        const type = response.headers.get('Content-Type') ?? ''
        if (!response.ok || !type.startsWith('text/event-stream')) {
          await response.body?.cancel().catch(() => {})
          if (response.status === 429 || response.status >= 500) {
            failures += 1
            await sleep(Math.max(delayFrom(response.headers.get('Retry-After')),
              backoff(retryMs, failures)), stream.signal)
            continue
          }
          if ((response.status === 404 || response.status === 410) && row.heard) {
            row.gone = true
          } else {
            row.streamFailed = true
            row.note = `no live updates (the gateway answered ${response.status})`
          }
          render(row)
          break
        }
        await readEvents(response.body, (event) => {
          heard = true
          take(row, event)
        }, {
          onRetry: (ms) => { retryMs = ms },
          stop: () => row.final || row.gone,
          signal: stream.signal,
        })
      } catch {
        // A dropped connection: tried again below, unless the stream was stopped.
        if (stream.signal.aborted) break
      }
      if (stream.signal.aborted || row.final || row.gone) break
      failures = heard ? 0 : failures + 1
      await sleep(backoff(retryMs, failures), stream.signal)
    }
  } finally {
    leaving.signal.removeEventListener('abort', stop)
    streaming -= 1
    if (row.stream === stream) row.stream = null
    render(row)
    schedule()
  }
}

function backoff(retryMs, failures) {
  if (failures === 0) return retryMs
  const wait = Math.min(MAX_RECONNECT_MS, retryMs * 2 ** (failures - 1))
  return wait * (0.8 + Math.random() * 0.4) // spread the page's reconnections apart
}

function take(row, { event, data }) {
  let payload
  try {
    payload = JSON.parse(data)
  } catch {
    return
  }
  if (!payload || typeof payload !== 'object') return
  if (event === 'status') {
    row.heard = true
    row.statusEvents += 1
    row.note = null
    takeServerView(row, payload, row.eventsUrl)
  } else if (event === 'progress') {
    row.progressEvents += 1
    takeProgress(row, payload)
  } else if (event === 'gone') {
    row.gone = true
  } else {
    return
  }
  render(row)
}

// A file this page starts: its row goes to the top at once, named by the file until the
// gateway has it.
function startRow(file) {
  if (fileUploads.has(file.id) || pendingRows.has(file.id)) return
  started += 1
  const row = newRow({ name: file.name ?? null, size: file.size ?? null, sent: true,
    sentOrder: started, rank: 1e9 + started, note: 'starting' })
  pendingRows.set(file.id, row)
  render(row)
  placeRows()
}

// The file's upload URL is known (its creation answered, or a HEAD or PATCH goes to it):
// its row is that upload's, followed live from now on.
function uploadKnown(file, uploadUrl) {
  const id = idOf(uploadUrl)
  if (!id || fileUploads.get(file.id) === id) return
  fileUploads.set(file.id, id)
  const pending = pendingRows.get(file.id)
  pendingRows.delete(file.id)
  started += 1
  let row = rows.get(id)
  if (!row) {
    row = pending ?? newRow({ name: file.name ?? null, size: file.size ?? null,
      rank: 1e9 + started })
    row.id = id
    // A file whose first try failed before its creation is being tried again.
    row.final = false
    rows.set(id, row)
  }
  row.sent = true
  row.sentOrder = started
  row.note = row.heard || row.final ? null : 'sending'
  row.uploadUrl = row.uploadUrl ?? uploadUrl
  row.eventsUrl = row.eventsUrl ??
    new URL(`/api/upload/events/${encodeURIComponent(id)}`, uploadUrl).href
  render(row)
  placeRows()
  schedule()
}

function fileLeft(file, note) {
  const pending = pendingRows.get(file.id)
  if (!pending) return
  if (note === null) {
    pendingRows.delete(file.id)
    placeRows()
  } else {
    pending.note = note
    pending.final = true
    render(pending)
  }
}

// The request each tus-js-client response answers, to know the file a Location is for.
const requestFiles = new WeakMap()

function beforeRequest(request, file) {
  authorize(request)
  if (!file) return
  if (request.getMethod() === 'POST') requestFiles.set(request, file)
  else uploadKnown(file, request.getURL())
}

function afterResponse(request, response) {
  const file = requestFiles.get(request)
  if (!file || response.getStatus() !== 201) return
  const location = response.getHeader('Location')
  if (!location) return
  let url
  try {
    url = new URL(location, request.getURL())
  } catch {
    return // tus-js-client fails the upload on it and the Dashboard says so
  }
  uploadKnown(file, url.href)
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
    onBeforeRequest: beforeRequest,
    onAfterResponse: afterResponse,
  }))

uppy.on('upload-start', (files) => {
  for (const file of files ?? []) startRow(file)
})
uppy.on('upload-success', (file, response) => {
  const uploadUrl = response?.uploadURL ?? file?.tus?.uploadUrl
  if (file && uploadUrl) uploadKnown(file, uploadUrl)
})
uppy.on('upload-error', (file, error) => {
  if (file) fileLeft(file, `not sent: ${error?.message ?? 'the upload failed'}`)
})
uppy.on('file-removed', (file) => {
  if (file) fileLeft(file, null)
})

// Leaving the page ends its streams and list requests at once; a page restored from the
// back-forward cache starts them again.
window.addEventListener('pagehide', () => { leaving.abort() })
window.addEventListener('pageshow', (event) => {
  if (!event.persisted) return
  leaving = new AbortController()
  schedule()
})
void loadPage()

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
