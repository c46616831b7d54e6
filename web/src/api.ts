// The page's one way to reach the mesh: grpc-web to the gateway that served the page, with the
// session's token on every call, and every failure turned into words a person can act on.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ChatService } from "../gen/aimesh/chat/v1/chat_pb";
import { ContentService } from "../gen/aimesh/content/v1/content_pb";
import { NotificationService } from "../gen/aimesh/notify/v1/notify_pb";
import { OpsService } from "../gen/aimesh/ops/v1/ops_pb";
import { RecommendService } from "../gen/aimesh/recommend/v1/recommend_pb";
import { SearchService } from "../gen/aimesh/search/v1/search_pb";
import { UserService } from "../gen/aimesh/user/v1/user_pb";

const TOKEN_KEY = "aimesh.token";

export const session = {
  get token(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value: string | null) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

const withToken: Interceptor = (next) => (request) => {
  const token = session.token;
  if (token) request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  interceptors: [withToken],
});

export const users = createClient(UserService, transport);
export const search = createClient(SearchService, transport);
export const recommend = createClient(RecommendService, transport);
export const chat = createClient(ChatService, transport);
export const contents = createClient(ContentService, transport);
export const notify = createClient(NotificationService, transport);
export const ops = createClient(OpsService, transport);

/** A call's failure as the page shows it; `signedOut` when the token is no longer accepted. */
export interface Problem {
  message: string;
  signedOut: boolean;
}

export function problem(error: unknown): Problem {
  const e = ConnectError.from(error);
  switch (e.code) {
    case Code.Unauthenticated:
      return { message: "Your session has ended. Please log in again.", signedOut: true };
    case Code.ResourceExhausted:
      return { message: "Too many requests: you reached your plan's rate limit. Try again in a minute.", signedOut: false };
    case Code.InvalidArgument:
      return { message: `Please check your input: ${e.rawMessage}`, signedOut: false };
    case Code.PermissionDenied:
      return { message: `Not allowed: ${e.rawMessage}`, signedOut: false };
    case Code.Unavailable:
    case Code.DeadlineExceeded:
      return { message: "The service is busy or unavailable. Try again shortly.", signedOut: false };
    default:
      return { message: `${Code[e.code]}: ${e.rawMessage}`, signedOut: false };
  }
}

export { Code, ConnectError };
