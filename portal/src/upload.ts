// Uploads with progress: fetch cannot report upload progress, XMLHttpRequest can.
import { session } from "./session";
import { ApiProblem } from "./api/client";
import type { Problem } from "./api/client";

export function uploadWithProgress<T>(url: string, body: Blob, contentType: string, onProgress: (fraction: number) => void): Promise<T> {
  const attempt = () =>
    new Promise<{ status: number; body: unknown }>((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("Content-Type", contentType);
      if (session.accessToken) xhr.setRequestHeader("Authorization", `Bearer ${session.accessToken}`);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
      xhr.onload = () => {
        let parsed: unknown = null;
        try {
          parsed = JSON.parse(xhr.responseText);
        } catch {
          parsed = null;
        }
        resolve({ status: xhr.status, body: parsed });
      };
      xhr.onerror = () => reject(new Error("the upload failed: network error"));
      xhr.send(body);
    });
  return (async () => {
    let result = await attempt();
    if (result.status === 401 && (await session.refresh())) result = await attempt();
    if (result.status >= 200 && result.status < 300) {
      onProgress(1);
      return result.body as T;
    }
    const problem = (result.body ?? {}) as Partial<Problem>;
    throw new ApiProblem({
      type: problem.type ?? "about:blank",
      title: problem.title ?? "Upload failed",
      status: result.status,
      detail: problem.detail ?? `upload failed with status ${result.status}`,
      code: problem.code ?? "client_error",
    } as Problem);
  })();
}
