// dam-pipeline gallery: plain JS over the JSON API. No build step, no external requests.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: localStorage.getItem("dam.apiKey") || "", next: null, mode: "gallery", query: "", blobs: new Map(), polling: null };

function headers() { return state.key ? { "X-API-Key": state.key } : {}; }

async function api(path) {
  const r = await fetch(path, { headers: headers() });
  if (r.status === 401) { askKey("This server needs an API key."); throw new Error("unauthorized"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
  return body;
}

function askKey(message) {
  $("#key-input").value = state.key;
  if (message) setStatus(message);
  if (!$("#key-dialog").open) $("#key-dialog").showModal();
}

function setStatus(text) { $("#status-line").textContent = text || ""; }

// Images go through fetch so the API key header is sent; blob URLs are cached per path.
async function loadImage(img, path) {
  if (state.blobs.has(path)) { img.src = state.blobs.get(path); return true; }
  try {
    const r = await fetch(path, { headers: headers() });
    if (!r.ok) return false;
    const url = URL.createObjectURL(await r.blob());
    state.blobs.set(path, url);
    img.src = url;
    return true;
  } catch { return false; }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function card(item) {
  const thumb = el("div", { class: "thumb" });
  if (item.status === "processed") {
    const img = el("img", { alt: item.caption || item.filename || "", loading: "lazy" });
    thumb.append(img);
    loadImage(img, item.thumbnail_url).then((ok) => { if (!ok) thumb.replaceChildren("no thumbnail"); });
  } else if (item.status === "queued") {
    thumb.append(el("span", { class: "badge", text: "queued…" }));
  } else {
    thumb.append(el("span", { class: "badge error", text: "error" }));
  }
  const caption = el("div", { class: "caption", "data-testid": "caption" });
  if (item.score !== undefined) caption.append(el("span", { class: "score", "data-testid": "score", text: item.score.toFixed(3) }));
  caption.append(item.status === "error" ? `Could not process: ${item.error || "unknown error"}`
    : item.status === "queued" ? "Waiting for the pipeline…" : (item.caption || ""));
  const node = el("div", { class: "card", "data-testid": "card", tabindex: "0", dataset: { id: item.id, status: item.status } },
    thumb, caption, el("div", { class: "name", text: item.filename || item.id }));
  node.addEventListener("click", () => openDetail(item.id));
  node.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(item.id); });
  return node;
}

function render(items, append) {
  const gallery = $("#gallery");
  if (!append) gallery.replaceChildren();
  for (const item of items) gallery.append(card(item));
  const none = gallery.children.length === 0;
  $("#empty").hidden = !(none && state.mode === "gallery");
  $("#no-results").hidden = !(none && state.mode === "search");
  $("#more").hidden = !(state.mode === "gallery" && state.next);
}

async function loadGallery(append = false) {
  state.mode = "gallery";
  $("#clear-search").hidden = true;
  try {
    const url = "/assets?limit=60" + (append && state.next ? "&cursor=" + encodeURIComponent(state.next) : "");
    const page = await api(url);
    state.next = page.next;
    render(page.items, append);
    const queued = page.items.filter((i) => i.status === "queued").length;
    setStatus(queued ? `${queued} image(s) waiting for the pipeline…` : "");
    schedulePoll(queued > 0);
  } catch (e) { setStatus(`Could not load the gallery: ${e.message}`); }
}

async function runSearch(q) {
  state.mode = "search"; state.query = q;
  $("#clear-search").hidden = false;
  setStatus(`Searching for “${q}”…`);
  try {
    const res = await api("/search?k=60&q=" + encodeURIComponent(q));
    render(res.items, false);
    setStatus(res.items.length ? `${res.items.length} result(s) for “${q}”, best first` : "");
  } catch (e) { render([], false); setStatus(`Search failed: ${e.message}`); }
}

function schedulePoll(active) {
  clearTimeout(state.polling);
  if (active && state.mode === "gallery") state.polling = setTimeout(() => loadGallery(false), 3000);
}

async function openDetail(id) {
  const dlg = $("#detail");
  try {
    const item = await api(`/assets/${id}`);
    $("#detail-filename").textContent = item.filename || item.id;
    $("#detail-caption").textContent = item.caption || (item.status === "queued" ? "Waiting for the pipeline…" : "");
    $("#detail-tags").replaceChildren(...(item.tags || []).map((t) => el("span", { text: t })));
    const meta = [["status", item.status], ["type", item.mime_type], ["size", `${item.width} × ${item.height}`],
      ["uploaded", item.uploaded_at], ["processed", item.processed_at || "—"], ["id", item.id]];
    $("#detail-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v ?? "" })]));
    $("#detail-error").hidden = !item.error;
    $("#detail-error").textContent = item.error || "";
    const img = $("#detail-image");
    img.removeAttribute("src"); img.alt = item.caption || item.filename || "";
    loadImage(img, item.original_url);
    dlg.dataset.id = id;
    if (!dlg.open) dlg.showModal();
    const sim = $("#similar");
    sim.replaceChildren(el("p", { class: "empty", text: "Looking for similar images…" }));
    if (item.status !== "processed") { sim.replaceChildren(el("p", { class: "empty", text: "Similar images appear once this image is processed." })); return; }
    const res = await api(`/assets/${id}/similar?k=12`);
    sim.replaceChildren(...(res.items.length ? res.items.map(card) : [el("p", { class: "empty", text: "No other images yet." })]));
  } catch (e) { setStatus(`Could not open ${id}: ${e.message}`); }
}

// One row per file being uploaded, whichever way it goes: progress, then done or failed.
function uploadRow(name) {
  const row = el("div", { class: "upload-row", "data-testid": "upload-row" });
  const bar = el("progress", { max: "100", value: "0" });
  const label = el("span", { text: "uploading…" });
  row.append(el("span", { text: name }), bar, label);
  $("#uploads").append(row);
  return {
    progress(fraction) { bar.value = Math.round(100 * fraction); },
    checking() { bar.value = 100; label.textContent = "checking…"; },
    done(body) {
      bar.value = 100;
      label.textContent = body.duplicate ? "already here (duplicate)" : "queued";
      row.dataset.state = "done";
      setTimeout(() => row.remove(), 6000);
    },
    fail(message, status) {
      if (status === 401) askKey("This server needs an API key.");
      row.classList.add("failed");
      row.dataset.state = "failed";
      label.textContent = `failed: ${message}`;
    },
  };
}

// The local-folder store: the bytes go through the API, POST /upload.
function uploadFile(file) {
  const row = uploadRow(file.name);
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/upload");
    if (state.key) xhr.setRequestHeader("X-API-Key", state.key);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) row.progress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 202 || xhr.status === 200) row.done(body);
      else row.fail(body.detail || "HTTP " + xhr.status, xhr.status);
      resolve();
    };
    xhr.onerror = () => { row.fail("network error"); resolve(); };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// The S3/R2 store: Uppy's @uppy/aws-s3 against this API's Companion-shaped /s3 routes, the bytes PUT
// straight to the bucket. A file of more than one S3 part (5 MiB) goes in parts, resumable part by part.
const MULTIPART_FROM = 5 * 1024 * 1024;
const direct = { uppy: null, loading: null, rows: new Map(), completions: new Map() };

function directUploads() { return $('meta[name="dam-upload"]')?.content === "direct"; }

function loadUppy() {
  direct.loading ??= new Promise((resolve, reject) => {
    const script = el("script", { src: "/static/vendor/uppy/uppy.min.js" });
    script.onload = () => resolve(makeUppy());
    script.onerror = () => { direct.loading = null; script.remove(); reject(new Error("could not load Uppy")); };
    document.head.append(script);
  });
  return direct.loading;
}

function makeUppy() {
  const { Uppy, AwsS3 } = window.Uppy;
  const uppy = new Uppy({ autoProceed: false });
  uppy.use(AwsS3, {
    id: "AwsS3",
    endpoint: location.origin,
    headers: headers(),
    shouldUseMultipart: (file) => file.size > MULTIPART_FROM,
    allowedMetaFields: ["size", "sha256"], // declared: the store and the API check what arrived against them
    uploadPartBytes: putOnce(AwsS3.uploadPartBytes),
  });
  uppy.on("upload-progress", (file, p) => {
    if (p.bytesTotal) direct.rows.get(file.id)?.progress(p.bytesUploaded / p.bytesTotal);
  });
  uppy.on("upload-success", (file, response) => {
    const row = direct.rows.get(file.id);
    const body = response.body || {};
    // Multipart: Uppy's completion call was the API's, its answer is POST /upload's. A single PUT
    // has no completion call in Uppy's protocol: the API's is POST /s3/complete with the staging key.
    direct.completions.set(file.id, body.id ? Promise.resolve(row?.done(body)) : completePut(body.key, row));
  });
  uppy.on("upload-error", (file, err) => {
    const status = err?.isAuthError ? 401 : undefined;
    direct.rows.get(file.id)?.fail(err?.cause?.message || err?.message || "upload failed", status);
  });
  direct.uppy = uppy;
  return uppy;
}

// A PUT to an original's own key is create-only (If-None-Match): a 412 means these very bytes are
// stored already (the store checked the digest), so the file goes on to its completion, which answers.
function putOnce(upload) {
  return async (args) => {
    try { return await upload(args); } catch (err) {
      if (err?.source?.status !== 412 || !args.signature?.headers?.["If-None-Match"]) throw err;
      args.onProgress?.({ loaded: args.size, lengthComputable: true });
      args.onComplete?.("");
      return { ETag: "" };
    }
  };
}

// What lets the API sign the original's own key: the type from the first bytes (the browser's guess
// goes by the name) and the SHA-256 (WebCrypto: https or localhost only). Either missing: staging.
async function sniffType(file) {
  const b = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const text = (from, n) => String.fromCharCode(...b.slice(from, from + n));
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "image/jpeg";
  if (b[0] === 0x89 && text(1, 3) === "PNG") return "image/png";
  if (text(0, 4) === "GIF8") return "image/gif";
  if (text(0, 4) === "RIFF" && text(8, 4) === "WEBP") return "image/webp";
  return null;
}

async function sha256Hex(file) {
  if (!globalThis.crypto?.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, "0")).join("");
}

async function declared(file) {
  const meta = file.size > 0 ? { size: String(file.size) } : {};
  if (file.size === 0 || file.size > MULTIPART_FROM) return { meta, type: file.type };
  const [type, sha] = await Promise.all([sniffType(file), sha256Hex(file)]).catch(() => [null, null]);
  return type && sha ? { meta: { ...meta, sha256: sha }, type } : { meta, type: file.type };
}

async function completePut(key, row) {
  row?.checking();
  try {
    const r = await fetch("/s3/complete?key=" + encodeURIComponent(key || ""), { method: "POST", headers: headers() });
    const body = await r.json().catch(() => ({}));
    if (r.status === 202 || r.status === 200) row?.done(body);
    else row?.fail(body.detail || "HTTP " + r.status, r.status);
  } catch { row?.fail("network error"); }
}

async function uploadDirect(list) {
  let uppy;
  try { uppy = await loadUppy(); } catch (e) {
    for (const file of list) uploadRow(file.name).fail(e.message);
    return;
  }
  uppy.getPlugin("AwsS3").setOptions({ headers: headers() }); // the key may have changed
  const ids = [];
  for (const file of list) {
    const row = uploadRow(file.name);
    try {
      const { meta, type } = await declared(file);
      const id = uppy.addFile({ name: file.name, type, data: file, meta, source: "gallery" });
      direct.rows.set(id, row);
      ids.push(id);
    } catch (e) { row.fail(e.message); }
  }
  if (!ids.length) return;
  try { await uppy.upload(); } catch { /* each file's failure is on its row */ }
  await Promise.all(ids.map((id) => direct.completions.get(id)));
  for (const id of ids) {
    direct.rows.delete(id); direct.completions.delete(id);
    if (uppy.getFile(id)) uppy.removeFile(id);
  }
}

async function uploadAll(files) {
  const list = Array.from(files);
  if (!list.length) return;
  if (directUploads()) await uploadDirect(list);
  else for (let i = 0; i < list.length; i += 4) await Promise.all(list.slice(i, i + 4).map(uploadFile));
  if (state.mode === "gallery") loadGallery(false);
}

function init() {
  $("#search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("#search-input").value.trim();
    if (q) runSearch(q); else loadGallery(false);
  });
  $("#clear-search").addEventListener("click", () => { $("#search-input").value = ""; loadGallery(false); });
  $("#more").addEventListener("click", () => loadGallery(true));
  $("#file-input").addEventListener("change", (e) => { uploadAll(e.target.files); e.target.value = ""; });
  $("#key-button").addEventListener("click", () => askKey(""));
  $("#key-form").addEventListener("submit", () => {
    state.key = $("#key-input").value.trim();
    if (state.key) localStorage.setItem("dam.apiKey", state.key); else localStorage.removeItem("dam.apiKey");
    state.blobs.clear();
    loadGallery(false);
  });
  $("#key-clear").addEventListener("click", () => { state.key = ""; localStorage.removeItem("dam.apiKey"); $("#key-dialog").close(); loadGallery(false); });
  const zone = document.body;
  zone.addEventListener("dragover", (e) => { e.preventDefault(); $("#drop-zone").classList.add("dragging"); });
  zone.addEventListener("dragleave", () => $("#drop-zone").classList.remove("dragging"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); $("#drop-zone").classList.remove("dragging"); uploadAll(e.dataTransfer.files); });
  loadGallery(false);
}

document.addEventListener("DOMContentLoaded", init);
