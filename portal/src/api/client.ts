// The typed API client (openapi-fetch over the types openapi-typescript generates from
// openapi/openapi.json into schema.d.ts; `npm run check-client` fails when they are stale).
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";
import { session } from "../session";

export type Schemas = components["schemas"];
export type Role = Schemas["Role"];
export type Permission = Schemas["Permission"];
export type Problem = Schemas["Problem"];

/** Adds the in-memory access token; on a 401 refreshes it once (from the cookie) and retries. */
async function authorizedFetch(request: Request): Promise<Response> {
  const retry = request.clone();
  const response = await fetch(session.authorize(request));
  if (response.status !== 401 || !session.accessToken || !(await session.refresh())) return response;
  return fetch(session.authorize(retry));
}

export const api = createClient<paths>({ baseUrl: "", fetch: authorizedFetch });

/** A failed call's problem document (RFC 9457), or a stand-in when the body was none. */
export class ApiProblem extends Error {
  constructor(readonly problem: Problem) {
    super(problem.detail || problem.title);
  }
  get code(): string {
    return this.problem.code;
  }
}

/** Unwraps an openapi-fetch result: the data, or throws its problem. */
export function must<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || !result.response.ok) {
    const body = result.error as Partial<Problem> | undefined;
    throw new ApiProblem({
      type: body?.type ?? "about:blank",
      title: body?.title ?? result.response.statusText,
      status: body?.status ?? result.response.status,
      detail: body?.detail ?? `${result.response.status} ${result.response.statusText}`,
      code: body?.code ?? "client_error",
    } as Problem);
  }
  return result.data as T;
}

/** The message to show for any failure. */
export function describe(error: unknown): string {
  if (error instanceof ApiProblem) return `${error.message} (${error.code})`;
  if (error instanceof Error) return error.message;
  return String(error);
}

/** Raw authorized fetch, for bodies openapi-fetch does not stream (downloads, SSE). */
export function rawFetch(path: string, init: RequestInit = {}): Promise<Response> {
  return authorizedFetch(new Request(path, init));
}

/** The items of a list answer (`{ items, next_cursor }`). */
export function itemsOf<T>(page: { items: T[] }): T[] {
  return page.items;
}

/** `/v1/tenants/{tenant}`, for the calls made outside the typed client (uploads, streams). */
export function tenantPath(tenant: string): string {
  return `/v1/tenants/${encodeURIComponent(tenant)}`;
}
