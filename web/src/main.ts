// The page: log in, search, recommendations, a streamed chat and live notifications, each a
// small function over the generated clients in api.ts. Server text is only ever set as
// textContent, never parsed as HTML.
import { FinishReason, Grounding } from "../gen/aimesh/chat/v1/chat_pb";
import { Source } from "../gen/aimesh/common/v1/common_pb";
import type { Notification } from "../gen/aimesh/notify/v1/notify_pb";
import { SloState } from "../gen/aimesh/ops/v1/ops_pb";
import { Role, Tier } from "../gen/aimesh/user/v1/user_pb";
import { chat, Code, ConnectError, notify, ops, problem, recommend, search, session, users } from "./api";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function element(tag: string, text = "", className = ""): HTMLElement {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

// --- problems and the signed-in state -------------------------------------------------------

function show(message: string): void {
  $("problem").textContent = message;
  $("problem").hidden = !message;
}

/** Shows what went wrong; a token the gateway no longer accepts ends the session. */
function fail(error: unknown): void {
  const p = problem(error);
  show(p.message);
  if (p.signedOut) signOut();
}

// Everything a signed-in session runs (the notification stream, a streaming answer) stops with it.
let signedIn = new AbortController();

function signOut(): void {
  session.token = null;
  signedIn.abort();
  newConversation();
  for (const id of ["search-results", "recs-list", "notification-list"]) $(id).replaceChildren();
  $("operations").hidden = true;
  for (const id of ["recs-meta", "unread", "who-name", "who-tier"]) $(id).textContent = "";
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
}

async function signIn(): Promise<void> {
  const { profile } = await users.getProfile({});
  $("who-name").textContent = profile?.displayName || profile?.email || "";
  $("who-tier").textContent = Tier[profile?.tier ?? Tier.UNSPECIFIED].toLowerCase();
  $("login").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  signedIn = new AbortController();
  void listenForNotifications(signedIn.signal);
  // Admins only: the gateway would refuse anyone else's call anyway (PERMISSION_DENIED).
  if (profile?.role === Role.ADMIN) void watchOperations(signedIn.signal);
  await showRecommendations();
}

async function logIn(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  show("");
  try {
    const reply = await users.login({ email: $<HTMLInputElement>("email").value,
                                      password: $<HTMLInputElement>("password").value });
    session.token = reply.accessToken;
    await signIn();
  } catch (error) {
    const e = ConnectError.from(error);
    show(e.code === Code.Unauthenticated ? "Wrong email or password." : problem(e).message);
  }
}

async function register(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  show("");
  const email = $<HTMLInputElement>("register-email").value;
  const password = $<HTMLInputElement>("register-password").value;
  try {
    await users.register({ email, password, displayName: $<HTMLInputElement>("register-name").value });
    session.token = (await users.login({ email, password })).accessToken;
    await signIn();
  } catch (error) {
    const e = ConnectError.from(error);
    show(e.code === Code.AlreadyExists ? "That email is already registered: log in instead." : problem(e).message);
  }
}

// --- catalog: search, recommendations, purchases --------------------------------------------

interface Item { itemId: bigint | null; title: string; detail: string }   // null: not for sale

function itemList(list: HTMLElement, items: Item[]): void {
  list.replaceChildren(...items.map((item) => {
    const row = element("li");
    row.append(element("span", item.title, "title"), element("span", item.detail, "detail"));
    if (item.itemId !== null) {
      row.dataset.itemId = String(item.itemId);
      const buy = element("button", "Buy") as HTMLButtonElement;
      buy.addEventListener("click", () => void purchase(item.itemId!, buy));
      row.append(buy);
    }
    return row;
  }));
}

/** A catalog document's item id; documents indexed without one are shown, not sold. */
function itemIdOf(metadata: { [key: string]: string }): bigint | null {
  const id = metadata["item_id"];
  return id && /^[0-9]+$/.test(id) ? BigInt(id) : null;
}

/** Searches the catalog for a title: what a cited source's link does. */
function searchFor(title: string): void {
  $<HTMLInputElement>("query").value = title;
  $<HTMLFormElement>("search-form").requestSubmit();
}

async function runSearch(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  show("");
  try {
    const reply = await search.search({ query: $<HTMLInputElement>("query").value, pageSize: 10 });
    itemList($("search-results"), reply.results.map(({ document, score }) => ({
      itemId: itemIdOf(document?.metadata ?? {}),
      title: document?.title ?? "",
      detail: `${document?.metadata["year"] ?? ""} · score ${score.toFixed(3)}`,
    })));
  } catch (error) {
    fail(error);
  }
}

async function showRecommendations(): Promise<void> {
  try {
    const reply = await recommend.recommend({ limit: 8 });
    $("recs-meta").textContent = reply.source === Source.MODEL
      ? `from recommender ${reply.modelVersion}`
      : `popular items (fallback: ${reply.fallbackReason})`;
    $("recs-meta").dataset.source = Source[reply.source];
    itemList($("recs-list"), reply.items.map((item) => ({
      itemId: item.itemId, title: item.title, detail: `score ${item.score.toFixed(2)}`,
    })));
  } catch (error) {
    fail(error);
  }
}

async function purchase(itemId: bigint, button: HTMLButtonElement): Promise<void> {
  button.disabled = true;
  try {
    await users.recordPurchase({ itemId });
    button.textContent = "Bought";   // recommendations follow when the purchase's event arrives
  } catch (error) {
    button.disabled = false;
    fail(error);
  }
}

// --- chat: one streamed answer per question -------------------------------------------------

let conversationId = "";   // the next question continues this conversation; "" starts one
let turn = new AbortController();   // the answer streaming now, if any

/** Stops the answer in progress: the call is cancelled, and Triton stops generating. */
function stopAnswer(): void {
  turn.abort();
}

/** Stops the answer in progress and forgets the conversation. */
function newConversation(): void {
  stopAnswer();
  conversationId = "";
  $("chat-log").replaceChildren();
}

async function ask(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  show("");
  const input = $<HTMLInputElement>("chat-input");
  const log = $("chat-log");
  log.append(element("p", input.value, "question"));
  const answer = element("p", "", "answer");
  answer.dataset.state = "streaming";
  log.append(answer);
  const text = input.value;
  input.value = "";
  const sent = performance.now();
  const thisTurn = (turn = new AbortController());
  const stop = $("chat-stop");
  stop.hidden = false;
  try {
    for await (const reply of chat.ask({ message: { conversationId, text } }, { signal: thisTurn.signal })) {
      switch (reply.kind.case) {
        case "delta":
          answer.dataset.firstTokenMs ??= (performance.now() - sent).toFixed(1);
          answer.textContent += reply.kind.value.text;
          break;
        case "citations": {
          // Each source is a link that searches the catalog for that title.
          const sources = element("p", "Sources: ", "citations");
          reply.kind.value.citations.forEach((citation, i) => {
            const link = element("a", citation.title, "citation") as HTMLAnchorElement;
            link.href = "#search";
            link.addEventListener("click", (click) => { click.preventDefault(); searchFor(citation.title); });
            sources.append(...(i ? ["; ", link] : [link]));
          });
          answer.after(sources);
          break;
        }
        case "end": {
          const end = reply.kind.value;
          if (!thisTurn.signal.aborted) conversationId = end.conversationId;
          answer.dataset.source = Source[end.source];
          answer.dataset.finish = FinishReason[end.finishReason];
          answer.dataset.grounding = Grounding[end.grounding];
          if (end.source === Source.FALLBACK) answer.append(element("em", ` (retrieval only: ${end.fallbackReason})`));
          break;
        }
      }
    }
    answer.dataset.state = "done";
  } catch (error) {
    answer.dataset.state = thisTurn.signal.aborted ? "cancelled" : "failed";
    if (!thisTurn.signal.aborted) fail(error);
  } finally {
    if (turn === thisTurn) stop.hidden = true;   // a newer question's answer may be streaming
  }
}

// --- notifications: the list so far, then live ----------------------------------------------

function countUnread(): void {
  $("unread").textContent = String($("notification-list").querySelectorAll(".unread").length);
}

async function markAllRead(): Promise<void> {
  const unread = [...$("notification-list").querySelectorAll<HTMLElement>(".unread")];
  if (!unread.length) return;
  try {
    await notify.markRead({ notificationIds: unread.map((row) => row.dataset.id!) });
    unread.forEach((row) => row.className = "read");
    countUnread();
  } catch (error) {
    fail(error);
  }
}

function addNotification(n: Notification, live: boolean): void {
  const list = $("notification-list");
  if (list.querySelector(`[data-id="${CSS.escape(n.notificationId)}"]`)) return;
  const row = element("li", "", n.read ? "read" : "unread");
  row.dataset.id = n.notificationId;
  row.dataset.kind = n.kind;
  row.append(element("strong", n.title), element("span", n.body));
  if (live) list.prepend(row);
  else list.append(row);
  countUnread();
  // The purchase reached the mesh's events, and with them the user's history.
  if (live && n.kind === "user.purchased") void showRecommendations();
}

const RESUBSCRIBE_MS = [1000, 2000, 5000, 10000];

async function listenForNotifications(signal: AbortSignal): Promise<void> {
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      // Subscribe first and list once the server has confirmed it (its headers): a notification
      // made in between is then in the list or live (shown once), never in neither.
      let subscribed = (): void => {};
      const confirmed = new Promise<void>((resolve) => (subscribed = resolve));
      const live = notify.subscribe({}, { signal, onHeader: () => subscribed() })[Symbol.asyncIterator]();
      const first = live.next();       // opens the call
      await Promise.race([confirmed, first]);
      const { notifications } = await notify.listNotifications({ pageSize: 20 }, { signal });
      notifications.forEach((n) => addNotification(n, false));
      for (let next = await first; !next.done; next = await live.next()) {
        attempt = 0;
        if (next.value.notification) addNotification(next.value.notification, true);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (problem(error).signedOut) return fail(error);
    }
    // The stream ended (an idle timeout, a restart): come back after a growing pause.
    await new Promise((resume) => setTimeout(resume, RESUBSCRIBE_MS[Math.min(attempt, RESUBSCRIBE_MS.length - 1)]));
  }
}

// --- operations (admins): the mesh at a glance, refreshed every few seconds --------------------

const OPS_REFRESH_MS = 2000;

function cells(row: HTMLTableRowElement, values: string[]): HTMLTableRowElement {
  values.forEach((value) => row.append(element("td", value)));
  return row;
}

const fixed = (value: number | undefined, digits = 1): string => (value === undefined ? "-" : value.toFixed(digits));
const percent = (share: number): string => `${(share * 100).toFixed(1)}%`;

async function showOperations(signal: AbortSignal): Promise<void> {
  const o = await ops.getOverview({}, { signal });
  $("operations").hidden = false;
  $("ops-time").textContent = `last ${o.windowSeconds.toFixed(0)} s`;
  $("ops-routes").querySelector("tbody")!.replaceChildren(...o.routes.map((r) => {
    const row = cells(document.createElement("tr"), [
      r.route, fixed(r.callsPerSecond), fixed(r.p50Ms, 0), fixed(r.p99Ms, 0), percent(r.errorShare),
      percent(r.fallbackShare),
      r.sloAvailability === undefined ? "-" : `${(r.sloAvailability * 100).toFixed(2)}%, p99 ${r.sloP99Ms} ms`,
      { [SloState.MET]: "ok", [SloState.BREACHED]: "BREACH" }[r.sloState as number] ?? "idle"]);
    row.dataset.state = SloState[r.sloState];
    return row;
  }));
  const lines = (id: string, texts: string[]) =>
    $(id).replaceChildren(...(texts.length ? texts : ["none"]).map((t) => element("li", t)));
  lines("ops-canary", o.canarySplits.map((s) => `${s.service}: ${Object.entries(s.weights).sort()
    .map(([cluster, weight]) => `${cluster} ${weight}%`).join(", ")}`));
  lines("ops-faults", o.faults);
  lines("ops-breakers", o.breakers.map((b) => `${b.location} ${b.name}: ${b.state}`));
  $("ops-models").querySelector("tbody")!.replaceChildren(...o.models.map((m) => cells(document.createElement("tr"), [
    m.model, m.versions.join(", "), fixed(m.requestsPerSecond), fixed(m.averageBatch, 2),
    fixed(m.averageQueueMs, 2), String(m.pending)])));
}

async function watchOperations(signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    try {
      await showOperations(signal);
    } catch (error) {
      if (signal.aborted) return;
      if (problem(error).signedOut) return fail(error);
    }
    await new Promise((resume) => setTimeout(resume, OPS_REFRESH_MS));
  }
}

// --- start ----------------------------------------------------------------------------------

$("login-form").addEventListener("submit", (e) => void logIn(e as SubmitEvent));
$("register-form").addEventListener("submit", (e) => void register(e as SubmitEvent));
$("mark-read").addEventListener("click", () => void markAllRead());
$("search-form").addEventListener("submit", (e) => void runSearch(e as SubmitEvent));
$("chat-form").addEventListener("submit", (e) => void ask(e as SubmitEvent));
$("recs-refresh").addEventListener("click", () => void showRecommendations());
$("chat-new").addEventListener("click", newConversation);
$("chat-stop").addEventListener("click", stopAnswer);
$("logout").addEventListener("click", () => { show(""); signOut(); });

if (session.token) {
  // A failure here leaves no page to show: back to the login form, with the reason.
  signIn().catch((error) => { signOut(); show(problem(error).message); });
} else {
  signOut();
}
