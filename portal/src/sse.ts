// Server-sent events over fetch: EventSource cannot send an Authorization header, so the
// stream is read with a reader and parsed here (id, event, data; blank line ends an event).
import { rawFetch } from "./api/client";

export type StreamEvent = { id: string | null; event: string; data: string };

export function followEvents(path: string, onEvent: (e: StreamEvent) => void, signal: AbortSignal): Promise<void> {
  return (async () => {
    const response = await rawFetch(path, { headers: { Accept: "text/event-stream" }, signal });
    if (!response.ok || !response.body) throw new Error(`event stream failed: ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event: StreamEvent = { id: null, event: "message", data: "" };
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") event.id = text;
          else if (field === "event") event.event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) onEvent({ ...event, data: data.join("\n") });
      }
    }
  })();
}
