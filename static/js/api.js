// The REST API client for pages: same-origin session cookie plus the CSRF header on unsafe calls.

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

async function readBody(res) {
  const type = res.headers.get("content-type") || "";
  if (type.includes("application/json")) return res.json();
  return res.text();
}

/**
 * Call the API. `body` may be a plain object (sent as JSON), FormData or a Blob.
 * Resolves to the parsed body; rejects with ApiError carrying the server's `detail`.
 */
export async function api(path, { method = "GET", body, headers = {}, raw = false, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin", signal };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) {
    if (body instanceof FormData || body instanceof Blob) init.body = body;
    else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const res = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
  if (raw) return res;
  const data = res.status === 204 ? null : await readBody(res);
  if (!res.ok) {
    if (res.status === 401) {
      // session expired: go to the login page and come back here afterwards
      const next = encodeURIComponent(location.pathname + location.search);
      location.assign(`/login?next=${next}`);
    }
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data || res.statusText;
    throw new ApiError(res.status, detail, data);
  }
  return data;
}

/** Upload with progress (fetch has no upload progress): resolves to the parsed JSON answer. */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path.startsWith("/") ? path : `${API}/${path}`);
    xhr.setRequestHeader("X-CSRF-Token", CSRF);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress?.(e.loaded / e.total);
    xhr.onload = () => {
      const data = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data?.detail ?? xhr.statusText, data));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error: the upload did not reach the server"));
    xhr.send(formData);
  });
}

export function errorText(err) {
  if (err instanceof ApiError) {
    const d = err.detail;
    if (Array.isArray(d)) return d.map((x) => (x.loc ? `${x.loc.slice(1).join(".")}: ${x.msg}` : x.msg || String(x))).join("; ");
    if (d && typeof d === "object") return d.message || JSON.stringify(d);
    return `${d}`;
  }
  return err?.message || String(err);
}
