// The page: log in, search, recommendations, a streamed chat, content written live and live
// notifications, each a small function over the generated clients in api.ts. Server text is only
// ever set as textContent, never parsed as HTML.
import { FinishReason, Grounding } from "../gen/aimesh/chat/v1/chat_pb";
import { Source } from "../gen/aimesh/common/v1/common_pb";
import { type Content, ContentKind, ContentState, StepState } from "../gen/aimesh/content/v1/content_pb";
import type { Notification } from "../gen/aimesh/notify/v1/notify_pb";
import { SloState } from "../gen/aimesh/ops/v1/ops_pb";
import { Role, Tier } from "../gen/aimesh/user/v1/user_pb";
import { chat, Code, ConnectError, contents, notify, ops, problem, recommend, search, session, users } from "./api";

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

// Everything a signed-in session runs (the notification stream, a streaming answer, a watched
// piece of content) stops with it.
let signedIn = new AbortController();

function signOut(): void {
  session.token = null;
  signedIn.abort();
  newConversation();
  forgetContent();
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

// --- write: a piece of content created at once, then its saga watched step by step ----------

const KINDS: { [kind: string]: ContentKind } = {
  review: ContentKind.REVIEW, blurb: ContentKind.BLURB, story: ContentKind.STORY,
};
const FINAL = new Set([ContentState.PUBLISHED, ContentState.REJECTED, ContentState.FAILED,
                       ContentState.CANCELLED, ContentState.DELETED]);
const REWATCH_MS = [1000, 2000, 5000, 10000];

let piece = { contentId: "", watch: new AbortController() };   // the content shown now, if any

function showContent(c: Content): void {
  const state = $("write-state");
  state.textContent = ContentState[c.state].toLowerCase();
  state.dataset.state = ContentState[c.state];
  state.hidden = false;
  $("write-steps").replaceChildren(...c.steps.map((step) => {
    const row = element("li");
    row.dataset.step = step.name;
    row.dataset.state = StepState[step.state];
    const retried = step.attempts > 1 ? ` (attempt ${step.attempts})` : "";
    row.append(element("span", step.name, "title"), element("span", StepState[step.state].toLowerCase(), "state"),
               element("span", step.outcome + retried, "detail"));
    return row;
  }));
  $("write-text").textContent = c.text;
  $("write-text").hidden = !c.text;
  $("write-reason").textContent = c.reason;
  $("write-reason").hidden = !c.reason;
  $("write-cancel").hidden = FINAL.has(c.state);
}

/** Stops watching the content shown and clears the panel (the saga goes on on the server). */
function forgetContent(): void {
  piece.watch.abort();
  piece = { contentId: "", watch: new AbortController() };
  $("write-steps").replaceChildren();
  for (const id of ["write-state", "write-text", "write-reason", "write-cancel"]) $(id).hidden = true;
  for (const id of ["write-submit", "write-cancel"]) $<HTMLButtonElement>(id).disabled = false;
}

/** The content until it is final: the stream shows every change; one that ends early (an idle
 * timeout, a restart) is opened again after a growing pause. */
async function watchContent(contentId: string, signal: AbortSignal): Promise<void> {
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      for await (const { content } of contents.watchContent({ contentId }, { signal })) {
        attempt = 0;
        if (!content) continue;
        showContent(content);
        if (FINAL.has(content.state)) return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (ConnectError.from(error).code !== Code.Unavailable) return fail(error);
    }
    await new Promise((resume) => setTimeout(resume, REWATCH_MS[Math.min(attempt, REWATCH_MS.length - 1)]));
  }
}

async function write(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  show("");
  forgetContent();
  const thisPiece = piece;
  const submit = $<HTMLButtonElement>("write-submit");
  submit.disabled = true;   // one piece at a time on the page; Cancel stops it
  try {
    const { content } = await contents.createContent(
      { prompt: $<HTMLInputElement>("write-prompt").value, kind: KINDS[$<HTMLSelectElement>("write-kind").value] },
      { signal: thisPiece.watch.signal });
    if (!content) return;
    thisPiece.contentId = content.contentId;
    showContent(content);
    await watchContent(content.contentId, thisPiece.watch.signal);
  } catch (error) {
    if (!thisPiece.watch.signal.aborted) fail(error);
  } finally {
    if (piece === thisPiece) submit.disabled = false;
  }
}

/** Asks the saga to stop and undo what it did; the watch shows it compensating, then cancelled. */
async function cancelContent(): Promise<void> {
  const cancel = $<HTMLButtonElement>("write-cancel");
  if (!piece.contentId) return;
  cancel.disabled = true;
  try {
    await contents.cancelContent({ contentId: piece.contentId });
  } catch (error) {
    cancel.disabled = false;
    // FAILED_PRECONDITION: it became final meanwhile, which the watch shows.
    if (ConnectError.from(error).code !== Code.FailedPrecondition) fail(error);
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
$("write-form").addEventListener("submit", (e) => void write(e as SubmitEvent));
$("write-cancel").addEventListener("click", () => void cancelContent());
$("logout").addEventListener("click", () => { show(""); signOut(); });

if (session.token) {
  // A failure here leaves no page to show: back to the login form, with the reason.
  signIn().catch((error) => { signOut(); show(problem(error).message); });
} else {
  signOut();
}
