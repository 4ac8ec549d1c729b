// Server-sent events read with fetch(): an EventSource cannot send an Authorization header,
// and a gateway with --auth wants one on its event streams as on everything else.
//
// The parser follows the HTML standard's "Parsing an event stream": lines end in CRLF, LF or
// CR; a line starting with a colon is a comment (the gateway's `: ping`); `field: value`
// with one optional space after the colon; several `data` lines join with newlines; a blank
// line dispatches the event, and only when it has data; `id` (without NUL) is kept for the
// events after it; `retry` of digits only sets the reconnection time; an event cut off by
// the end of the stream is dropped. Chunks may split anything, even a CRLF or a UTF-8
// sequence, so text is decoded with { stream: true } and a line is only read once its end
// has arrived.

export class SseParser {
  // onEvent({ event, data, id }) for each event; onRetry(ms) for each valid `retry` field.
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent
    this.onRetry = onRetry
    this.buffer = ''
    this.type = ''
    this.data = []
    this.lastId = ''
  }

  push(text) {
    this.buffer += text
    let start = 0
    // A regular expression of its own: an onEvent handler may feed another parser.
    const ends = /\r\n|\r|\n/g
    for (let match = ends.exec(this.buffer); match; match = ends.exec(this.buffer)) {
      // A CR that ends the text so far may be the first half of a CRLF: wait for more.
      if (match[0] === '\r' && match.index === this.buffer.length - 1) break
      this.line(this.buffer.slice(start, match.index))
      start = match.index + match[0].length
    }
    this.buffer = this.buffer.slice(start)
  }

  // The stream ended. A lone CR still waiting ends its line; an event without its blank
  // line is incomplete and is not dispatched.
  end() {
    if (this.buffer.endsWith('\r')) this.line(this.buffer.slice(0, -1))
    this.buffer = ''
    this.type = ''
    this.data = []
  }

  line(line) {
    if (line === '') {
      this.dispatch()
      return
    }
    if (line.startsWith(':')) return
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'event') this.type = value
    else if (field === 'data') this.data.push(value)
    else if (field === 'id' && !value.includes('\0')) this.lastId = value
    else if (field === 'retry' && /^\d+$/.test(value)) this.onRetry(Number(value))
  }

  dispatch() {
    const { type, data } = this
    this.type = ''
    this.data = []
    if (data.length === 0) return
    this.onEvent({ event: type || 'message', data: data.join('\n'), id: this.lastId })
  }
}

// Read a response body to its end, or until stop() is true after an event (the caller has
// seen what it waited for), or until signal aborts (then the read rejects with AbortError).
export async function readEvents(body, onEvent, { onRetry, stop = () => false, signal } = {}) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  const parser = new SseParser(onEvent, onRetry)
  const cancel = () => { reader.cancel().catch(() => {}) }
  signal?.addEventListener('abort', cancel, { once: true })
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) {
        parser.push(decoder.decode())
        parser.end()
        return
      }
      parser.push(decoder.decode(value, { stream: true }))
      if (stop()) {
        cancel()
        return
      }
    }
  } finally {
    signal?.removeEventListener('abort', cancel)
  }
}
