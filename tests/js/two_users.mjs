// Drive one tus-js-client upload as one user of a gateway with auth on, and report as JSON.
//
// Usage: node two_users.mjs CONFIG.json
//
// Like upload.mjs, with what continuing someone else's upload needs: the upload URL given
// directly (tus-js-client's uploadUrl option, without an endpoint a failed HEAD is reported
// instead of a new upload being created), and the refused response's status in the report.
//
// Config fields (file and one of endpoint and uploadUrl required):
//   endpoint          creation URL; absent: the upload can only be continued
//   uploadUrl         an upload URL to continue
//   file              path of the file to upload
//   chunkSize         bytes per PATCH; absent: the whole file in one request
//   headers           extra request headers, e.g. {"Authorization": "Bearer <token>"}
//   metadata          object of metadata pairs
//   urlStorage        path of a FileUrlStorage JSON file; enables fingerprints
//   resume            continue the first previous upload urlStorage holds for the file
//   abortAfterBytes   call upload.abort() once onProgress reports this many bytes
//   timeoutMs         give up after this long, default 60000
//
// Output: one JSON line on stdout:
//   { status: "success" | "aborted" | "error", url, bytesUploaded, previousUploads,
//     resumedFrom, error, errorStatus, requests: [{method, url, status, offset, location}] }

import * as fs from 'node:fs'
import { FileUrlStorage, Upload } from 'tus-js-client'

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const result = {
    status: null,
    url: null,
    bytesUploaded: 0,
    previousUploads: null,
    resumedFrom: null,
    error: null,
    errorStatus: null,
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
    metadata: config.metadata ?? {},
    headers: config.headers ?? {},
    retryDelays: [],
    storeFingerprintForResuming: Boolean(config.urlStorage),
    removeFingerprintOnSuccess: false,
  }
  if (config.endpoint != null) options.endpoint = config.endpoint
  if (config.uploadUrl != null) options.uploadUrl = config.uploadUrl
  if (config.chunkSize != null) options.chunkSize = config.chunkSize
  if (config.urlStorage) options.urlStorage = new FileUrlStorage(config.urlStorage)

  let upload = null
  let aborting = false
  const entries = new WeakMap()
  options.onBeforeRequest = (req) => {
    const entry = { method: req.getMethod(), url: req.getURL(), status: null, offset: null,
      location: null }
    entries.set(req, entry)
    result.requests.push(entry)
  }
  options.onAfterResponse = (req, res) => {
    const entry = entries.get(req)
    if (entry) {
      entry.status = res.getStatus()
      entry.offset = res.getHeader('Upload-Offset') ?? null
      entry.location = res.getHeader('Location') ?? null
    }
  }
  options.onProgress = (bytesUploaded) => {
    result.bytesUploaded = bytesUploaded
    if (config.abortAfterBytes != null && !aborting && bytesUploaded >= config.abortAfterBytes) {
      aborting = true
      result.url = upload.url
      upload.abort().then(() => {
        clearTimeout(timer)
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
    result.error = String(err?.message ?? err)
    result.errorStatus = err?.originalResponse?.getStatus() ?? null
    finish('error', 1)
  }

  upload = new Upload(fs.createReadStream(config.file), options)
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
