// Drive one tus-js-client upload against a tus server and report what happened as JSON.
//
// Usage: node upload.mjs CONFIG.json   (or the JSON itself as the only argument)
//
// Config fields (all optional except endpoint and file):
//   endpoint                  creation URL, e.g. http://127.0.0.1:1080/files/
//   file                      path of the file to upload
//   source                    "file" (fs.ReadStream, default), "buffer" (whole file in memory)
//                             or "stream" (a plain Readable: the size is unknown up front)
//   chunkSize                 bytes per request; null or absent: the whole file in one request
//   parallelUploads           number of partial uploads (concatenation), default 1
//   uploadDataDuringCreation  send the first chunk with the POST
//   uploadLengthDeferred      create with Upload-Defer-Length: 1
//   metadata                  object of metadata pairs
//   headers                   object of extra request headers (tus-js-client's headers
//                             option), e.g. {"Authorization": "Bearer <token>"}
//   urlStorage                path of a FileUrlStorage JSON file; enables fingerprints
//   resume                    look the file's fingerprint up in urlStorage and resume the
//                             first previous upload found
//   abortAfterBytes           call upload.abort() once onProgress reports this many bytes,
//                             then exit without finishing
//   throttleBytesPerSecond    pace request bodies (a slow link), so that progress events and
//                             an abort can land in the middle of one request
//   retryDelays               tus-js-client retryDelays, default [] (fail on the first error)
//   protocol                  tus-js-client protocol: "tus-v1" (default), "ietf-draft-03"
//                             (interop version 5) or "ietf-draft-05" (interop version 6)
//   timeoutMs                 give up after this long, default 60000
//
// Output: one JSON line on stdout:
//   { status: "success" | "aborted" | "error", url, bytesUploaded, bytesTotal, firstProgress,
//     previousUploads, resumedFrom, error, requests: [{method, url, headers, status,
//     responseHeaders}] }
// Exit code 0 for success and aborted, 1 for error.

import * as fs from 'node:fs'
import { PassThrough, Readable, Transform } from 'node:stream'
import { DefaultHttpStack, FileUrlStorage, Upload } from 'tus-js-client'

const REQUEST_HEADERS = [
  'Upload-Length', 'Upload-Defer-Length', 'Upload-Offset', 'Upload-Concat', 'Upload-Metadata',
  'Content-Type', 'Tus-Resumable', 'Authorization', 'Upload-Complete',
  'Upload-Draft-Interop-Version',
]
const RESPONSE_HEADERS = [
  'Location', 'Upload-Offset', 'Upload-Length', 'Upload-Concat', 'Upload-Complete',
]

function readConfig() {
  const arg = process.argv[2]
  if (!arg) throw new Error('usage: node upload.mjs CONFIG.json')
  const text = arg.trimStart().startsWith('{') ? arg : fs.readFileSync(arg, 'utf8')
  return JSON.parse(text)
}

function openSource(config) {
  switch (config.source ?? 'file') {
    case 'file':
      return fs.createReadStream(config.file)
    case 'buffer':
      return fs.readFileSync(config.file)
    case 'stream':
      // A PassThrough is not an fs.ReadStream, so tus-js-client cannot stat it: the
      // length is really unknown until the stream ends.
      return fs.createReadStream(config.file).pipe(new PassThrough())
    default:
      throw new Error(`unknown source ${config.source}`)
  }
}

// Passes bytes on at a fixed rate in small pieces.
class Pace extends Transform {
  constructor(bytesPerSecond) {
    super()
    this._piece = 16 * 1024
    this._delayMs = (this._piece / bytesPerSecond) * 1000
  }

  _transform(chunk, _encoding, callback) {
    const pieces = []
    for (let i = 0; i < chunk.length; i += this._piece) {
      pieces.push(chunk.subarray(i, i + this._piece))
    }
    const next = () => {
      if (this.destroyed) return
      const piece = pieces.shift()
      if (piece === undefined) {
        callback()
        return
      }
      this.push(piece)
      setTimeout(next, this._delayMs)
    }
    next()
  }
}

// Wraps the default HTTP stack so that request bodies go out at a limited rate.
class PacedHttpStack {
  constructor(bytesPerSecond) {
    this._inner = new DefaultHttpStack()
    this._rate = bytesPerSecond
  }

  createRequest(method, url) {
    const req = this._inner.createRequest(method, url)
    const send = req.send.bind(req)
    req.send = (body = null) => {
      if (body == null) return send(body)
      const size = body.size ?? body.length
      const readable = body instanceof Readable ? body : Readable.from([body])
      const paced = readable.pipe(new Pace(this._rate))
      paced.size = size
      return send(paced)
    }
    return req
  }

  getName() {
    return 'PacedHttpStack'
  }
}

function pick(getter, names) {
  const out = {}
  for (const name of names) {
    const value = getter(name)
    if (value !== undefined && value !== null) out[name] = String(value)
  }
  return out
}

async function main() {
  const config = readConfig()
  const result = {
    status: null,
    url: null,
    bytesUploaded: 0,
    bytesTotal: null,
    firstProgress: null,
    previousUploads: null,
    resumedFrom: null,
    error: null,
    requests: [],
  }
  const finish = (status, code) => {
    result.status = status
    process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code))
  }
  const timer = setTimeout(() => {
    result.error = `timed out after ${config.timeoutMs ?? 60000} ms`
    finish('error', 1)
  }, config.timeoutMs ?? 60000)

  const options = {
    endpoint: config.endpoint,
    metadata: config.metadata ?? {},
    headers: config.headers ?? {},
    parallelUploads: config.parallelUploads ?? 1,
    uploadDataDuringCreation: Boolean(config.uploadDataDuringCreation),
    uploadLengthDeferred: Boolean(config.uploadLengthDeferred),
    retryDelays: config.retryDelays ?? [],
    storeFingerprintForResuming: Boolean(config.urlStorage),
    removeFingerprintOnSuccess: false,
  }
  if (config.protocol != null) options.protocol = config.protocol
  if (config.chunkSize != null) options.chunkSize = config.chunkSize
  if (config.urlStorage) options.urlStorage = new FileUrlStorage(config.urlStorage)
  if (config.throttleBytesPerSecond) {
    options.httpStack = new PacedHttpStack(config.throttleBytesPerSecond)
  }

  let upload = null
  let aborting = false
  // Parallel uploads send concurrently: a response is matched to its own request object.
  const entries = new WeakMap()
  options.onBeforeRequest = (req) => {
    const entry = {
      method: req.getMethod(),
      url: req.getURL(),
      headers: pick((n) => req.getHeader(n), REQUEST_HEADERS),
      status: null,
      responseHeaders: {},
    }
    entries.set(req, entry)
    result.requests.push(entry)
  }
  options.onAfterResponse = (req, res) => {
    const entry = entries.get(req)
    if (entry) {
      entry.status = res.getStatus()
      entry.responseHeaders = pick((n) => res.getHeader(n), RESPONSE_HEADERS)
    }
  }
  options.onProgress = (bytesUploaded, bytesTotal) => {
    if (result.firstProgress === null) result.firstProgress = bytesUploaded
    result.bytesUploaded = bytesUploaded
    result.bytesTotal = bytesTotal
    if (config.abortAfterBytes != null && !aborting && bytesUploaded >= config.abortAfterBytes) {
      aborting = true
      result.url = upload.url
      upload.abort().then(() => {
        clearTimeout(timer)
        // Give the closed connection a moment to reach the server before the process ends.
        setTimeout(() => finish('aborted', 0), 100)
      })
    }
  }
  options.onSuccess = () => {
    clearTimeout(timer)
    result.url = upload.url
    finish('success', 0)
  }
  options.onError = (err) => {
    clearTimeout(timer)
    result.url = upload.url
    result.error = String(err?.stack ?? err)
    finish('error', 1)
  }

  upload = new Upload(openSource(config), options)
  if (config.resume) {
    const previous = await upload.findPreviousUploads()
    result.previousUploads = previous.length
    if (previous.length > 0) {
      upload.resumeFromPreviousUpload(previous[0])
      result.resumedFrom = previous[0].uploadUrl ?? null
    }
  }
  upload.start()
}

main().catch((err) => {
  process.stdout.write(
    `${JSON.stringify({ status: 'error', error: String(err?.stack ?? err), requests: [] })}\n`,
    () => process.exit(1),
  )
})
