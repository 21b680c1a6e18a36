// The JSON API, and the server-sent events of new frames. The token (when the server has one)
// travels in the cookie the page got when it was opened as /?token=…

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(name, String(value));
  }
  const url = `/api/${path}${query.size ? "?" + query : ""}`;
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, "network", `the inspector cannot be reached (${err.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http_error", message: response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

// Calls onFrame(frame) for each merged frame of `world` (and once at connect, with the last one);
// onState("live" | "reconnecting"). Returns a function that closes the stream.
export function watchFrames(world, onFrame, onState) {
  const source = new EventSource(`/api/events?world=${encodeURIComponent(world)}`);
  source.addEventListener("open", () => onState("live"));
  source.addEventListener("error", () => onState("reconnecting"));
  source.addEventListener("hello", (event) => {
    onState("live");
    const doc = JSON.parse(event.data);
    if (doc.last_merged !== null) onFrame(doc.last_merged);
  });
  source.addEventListener("merged", (event) => onFrame(JSON.parse(event.data).frame));
  return () => source.close();
}
