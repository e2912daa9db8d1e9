// A job's Server-Sent Events, read with fetch (EventSource cannot send the X-API-Key header).

import { headers, state } from "./common.js";

export function followJob(jobId, onJobEvent) {
  if (state.streams.has(jobId)) return;
  const ctrl = new AbortController();
  state.streams.set(jobId, ctrl);
  (async () => {
    try {
      const r = await fetch(`/v1/jobs/${jobId}/events`, { headers: headers(), signal: ctrl.signal });
      if (!r.ok || !r.body) throw new Error(`events: HTTP ${r.status}`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let event = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          // Outside this try: an error in the handler is the page's bug, not a broken stream.
          if (data) { const payload = JSON.parse(data); queueMicrotask(() => onJobEvent(jobId, event, payload)); }
        }
      }
    } catch (e) {
      // Aborted, or the stream broke (server restart, network): the next poll of the jobs
      // list follows the job again while it is active.
    } finally {
      if (state.streams.get(jobId) === ctrl) state.streams.delete(jobId);
    }
  })();
}

export function closeStreams() { for (const c of state.streams.values()) c.abort(); state.streams.clear(); }
