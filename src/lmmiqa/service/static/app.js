// lmmiqa web page: upload or drop images, POST each to /v1/score (or /v1/assess), show the results.
// Plain JavaScript, no build step. Server text is always inserted with textContent (never as HTML).
"use strict";

(function () {
  const MAX_PARALLEL = 4;
  const $ = (sel, root = document) => root.querySelector(sel);

  const state = { info: null, authRequired: false, queue: [], running: 0, counter: 0 };

  const el = {
    serverInfo: $("#server-info"),
    methodSelect: $("#method-select"),
    assessLabel: $("#assess-label"),
    assessToggle: $("#assess-toggle"),
    questionLabel: $("#question-label"),
    questionInput: $("#question-input"),
    optionsInput: $("#options-input"),
    keyLabel: $("#key-label"),
    keyInput: $("#key-input"),
    dropZone: $("#drop-zone"),
    fileInput: $("#file-input"),
    limitsInfo: $("#limits-info"),
    pageError: $("#page-error"),
    results: $("#results"),
    template: $("#card-template"),
  };

  function showPageError(message) {
    el.pageError.textContent = message;
    el.pageError.hidden = !message;
  }

  function authHeaders() {
    const key = el.keyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // Every score on the page (the result, its regions, the tools) has the same number of decimals, so cards
  // compare at a glance ("3.500" beside "3.712", never "3.5").
  const SCORE_DIGITS = 3;
  // lmmiqa.methods.coverage.COVERED_MASS_THRESHOLD: below it the levels hold less than half of the model's
  // next-token probability, and the command line warns
  const COVERED_MASS_THRESHOLD = 0.5;

  function fmt(x, digits = SCORE_DIGITS) {
    if (x === null || x === undefined || Number.isNaN(Number(x))) return "–";
    const v = Number(x);
    return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(digits);
  }

  function fmtBound(x) {
    // scale ends as written ("1–5", "0.5–1")
    return x === null || x === undefined ? "–" : String(Number(Number(x).toFixed(SCORE_DIGITS)));
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
      return `${response.status}: ${JSON.stringify(body)}`;
    } catch (_) {
      return `${response.status} ${response.statusText}`;
    }
  }

  // ------------------------------------------------------------------ server info
  async function loadInfo() {
    try {
      const health = await fetch("/healthz").then((r) => r.json());
      state.authRequired = !!health.auth_required;
      el.keyLabel.hidden = !state.authRequired;
    } catch (err) {
      el.serverInfo.textContent = "server unreachable: " + err;
      return;
    }
    const response = await fetch("/v1/methods", { headers: authHeaders() });
    if (!response.ok) {
      el.serverInfo.textContent = "cannot list methods — " + (await errorMessage(response));
      return;
    }
    const info = await response.json();
    state.info = info;
    const model = Array.isArray(info.model) ? info.model.join(", ") : info.model;
    el.serverInfo.textContent = `model ${model ?? "–"} · default method ${info.default}`;
    el.methodSelect.textContent = "";
    for (const [name, meta] of Object.entries(info.methods)) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.title = meta.summary || "";
      if (name === info.default) option.selected = true;
      el.methodSelect.appendChild(option);
    }
    el.assessLabel.hidden = !info.assess_available;
    if (info.limits) {
      const mb = (info.limits.max_body_bytes / (1024 * 1024)).toFixed(0);
      el.limitsInfo.textContent = `up to ${info.limits.max_images} images per request, ${mb} MB per request`;
    }
  }

  // ------------------------------------------------------------------ uploading
  function addFiles(fileList) {
    showPageError("");
    let options;
    try {
      options = JSON.parse(el.optionsInput.value || "{}");
      if (typeof options !== "object" || options === null || Array.isArray(options)) throw new Error("not an object");
    } catch (err) {
      showPageError("Options must be a JSON object, e.g. {\"readout\": \"argmax\"} (" + err.message + ")");
      return;
    }
    for (const file of fileList) {
      const card = makeCard(file);
      const assess = el.assessToggle.checked;
      const question = el.questionInput.value.trim();
      const opts = assess && question ? { ...options, query: question } : options;
      state.queue.push({ file, card, options: opts, method: el.methodSelect.value, assess });
    }
    pump();
  }

  function pump() {
    while (state.running < MAX_PARALLEL && state.queue.length) {
      const job = state.queue.shift();
      state.running += 1;
      send(job).finally(() => {
        state.running -= 1;
        pump();
      });
    }
  }

  async function send(job) {
    const form = new FormData();
    form.append("image", job.file, job.file.name);
    if (job.method && !job.assess) form.append("method", job.method);
    form.append("options", JSON.stringify(job.options));
    const url = job.assess ? "/v1/assess" : "/v1/score";
    try {
      const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
      if (!response.ok) {
        showCardError(job.card, await errorMessage(response));
        return;
      }
      const body = await response.json();
      renderResult(job.card, body.results[0]);
    } catch (err) {
      showCardError(job.card, "request failed: " + err);
    }
  }

  // ------------------------------------------------------------------ rendering
  function makeCard(file) {
    const node = el.template.content.firstElementChild.cloneNode(true);
    state.counter += 1;
    node.dataset.index = String(state.counter);
    $(".name", node).textContent = file.name;
    const img = $(".thumb", node);
    img.alt = file.name;
    img.addEventListener("error", () => {
      $(".figure", node).hidden = true; // the browser cannot show it either (the card says why)
    });
    img.src = URL.createObjectURL(file);
    el.results.prepend(node);
    return node;
  }

  function showCardError(card, message) {
    card.classList.add("failed");
    card.dataset.state = "error";
    $(".status", card).hidden = true;
    const p = $(".error", card);
    p.textContent = message;
    p.hidden = false;
  }

  function renderResult(card, result) {
    if (!result) {
      showCardError(card, "the server returned no result");
      return;
    }
    if (result.error) {
      showCardError(card, result.error);
      return;
    }
    $(".status", card).hidden = true;
    card.dataset.state = "done";
    renderScore(card, result);
    renderCoveredMass(card, result);
    renderLevels(card, result);
    const details = result.details || {};
    renderRegions(card, details.regions, result.scale);
    renderExplanation(card, details.explanation);
    renderTools(card, details.tools);
  }

  function renderScore(card, result) {
    const block = $(".score-block", card);
    block.hidden = false;
    $(".score-value", card).textContent = fmt(result.score);
    const scale = result.scale;
    const direction = result.higher_is_better ? "higher is better" : "lower is better";
    const bar = $(".scale-bar", card);
    if (Array.isArray(scale) && scale.length === 2 && scale[1] > scale[0]) {
      $(".scale-text", card).textContent = `on ${fmtBound(scale[0])}–${fmtBound(scale[1])} (${direction}) · ${result.method}`;
      const pos = Math.min(1, Math.max(0, (result.score - scale[0]) / (scale[1] - scale[0])));
      $(".scale-marker", card).style.left = (pos * 100).toFixed(2) + "%";
      bar.classList.toggle("reversed", !result.higher_is_better);
    } else {
      $(".scale-text", card).textContent = `(${direction}) · ${result.method}`;
      bar.hidden = true;
    }
  }

  function renderCoveredMass(card, result) {
    // the command line warns when the levels hold little of the model's next-token probability (random
    // weights, a thinking template, a prompt that does not fit): say it on the card too
    const mass = result.details ? result.details.covered_mass : undefined;
    if (typeof mass !== "number" || !(mass < COVERED_MASS_THRESHOLD)) return;
    const note = $(".note", card);
    note.textContent =
      `Low covered mass: the levels hold only ${mass.toPrecision(2)} of the model's next-token probability ` +
      "(below " + COVERED_MASS_THRESHOLD + "). The model, its chat template or the prompt does not fit — " +
      "or it has random weights — so this score says little.";
    note.hidden = false;
    card.classList.add("low-mass");
  }

  function renderLevels(card, result) {
    const probs = result.probabilities;
    if (!probs || !Object.keys(probs).length) return;
    const words = (result.details && result.details.level_words) || {};
    const argmax = result.details ? result.details.argmax : undefined;
    const entries = Object.entries(probs);
    const maxP = Math.max(...entries.map(([, p]) => Number(p) || 0), 1e-9);
    const bars = $(".bars", card);
    const labels = document.createElement("div");
    labels.className = "bar-labels";
    for (const [level, p] of entries) {
      const bar = document.createElement("div");
      bar.className = "bar";
      if (argmax !== undefined && Number(level) === Number(argmax)) bar.classList.add("argmax");
      bar.dataset.level = level;
      bar.title = `${level}${words[level] ? " (" + words[level] + ")" : ""}: ${(100 * p).toFixed(1)}%`;
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = (100 * p).toFixed(0) + "%";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.height = ((100 * (Number(p) || 0)) / maxP).toFixed(1) + "%";
      bar.append(pct, fill);
      bars.appendChild(bar);
      const label = document.createElement("span");
      label.textContent = words[level] ? `${level} ${words[level]}` : level;
      labels.appendChild(label);
    }
    bars.after(labels);
    $(".levels", card).hidden = false;
  }

  function regionColor(score, scale) {
    if (!Array.isArray(scale) || typeof score !== "number") return "#2f6fde";
    const t = Math.min(1, Math.max(0, (score - scale[0]) / (scale[1] - scale[0] || 1)));
    const hue = Math.round(120 * t); // red (0) -> green (120)
    return `hsl(${hue}, 75%, 42%)`;
  }

  function renderRegions(card, regions, scale) {
    if (!Array.isArray(regions) || !regions.length) return;
    const img = $(".thumb", card);
    const layer = $(".regions", card);
    const draw = () => {
      layer.textContent = "";
      const w = img.naturalWidth;
      const h = img.naturalHeight;
      if (!w || !h) return;
      // the image is letterboxed by object-fit: contain; place the layer over the drawn picture
      const boxW = img.clientWidth;
      const boxH = img.clientHeight;
      const s = Math.min(boxW / w, boxH / h);
      const dw = w * s;
      const dh = h * s;
      layer.style.left = ((boxW - dw) / 2).toFixed(1) + "px";
      layer.style.top = ((boxH - dh) / 2).toFixed(1) + "px";
      layer.style.width = dw.toFixed(1) + "px";
      layer.style.height = dh.toFixed(1) + "px";
      layer.style.right = "auto";
      layer.style.bottom = "auto";
      regions.forEach((region, i) => {
        const bbox = region.bbox || region.box;
        if (!Array.isArray(bbox) || bbox.length !== 4) return;
        const [x0, y0, x1, y1] = bbox.map(Number);
        const score = typeof region.score === "number" ? region.score : undefined;
        const color = regionColor(score, scale);
        const box = document.createElement("div");
        box.className = "region";
        box.dataset.index = String(i);
        box.style.left = ((100 * x0) / w).toFixed(2) + "%";
        box.style.top = ((100 * y0) / h).toFixed(2) + "%";
        box.style.width = ((100 * (x1 - x0)) / w).toFixed(2) + "%";
        box.style.height = ((100 * (y1 - y0)) / h).toFixed(2) + "%";
        box.style.borderColor = color;
        const label = document.createElement("span");
        label.className = "region-label";
        label.style.background = color;
        label.textContent = score !== undefined ? fmt(score) : region.label || `#${i + 1}`;
        box.title = `region ${i + 1}: ${label.textContent}` + (region.area ? ` · area ${region.area} px` : "");
        box.appendChild(label);
        layer.appendChild(box);
      });
    };
    if (img.complete && img.naturalWidth) draw();
    else img.addEventListener("load", draw, { once: true });
    window.addEventListener("resize", draw);
  }

  function renderExplanation(card, explanation) {
    if (!explanation) return;
    const box = $(".explanation", card);
    box.textContent = typeof explanation === "string" ? explanation : JSON.stringify(explanation, null, 2);
    box.hidden = false;
  }

  function toolRow(name, v) {
    // AgenticIQA: {raw, normalized (1-5), error, ...}; also accepts a bare number or {score|value}
    if (v === null || typeof v !== "object") return [name, v, undefined, undefined];
    return [name, v.raw ?? v.score ?? v.value, v.normalized, v.error];
  }

  function toolRows(tools) {
    const rows = [];
    if (Array.isArray(tools)) {
      for (const t of tools) if (t && typeof t === "object") rows.push(toolRow(t.name || t.tool || "?", t));
    } else if (tools && typeof tools === "object") {
      for (const [name, v] of Object.entries(tools)) rows.push(toolRow(name, v));
    }
    return rows;
  }

  function renderTools(card, tools) {
    const rows = toolRows(tools);
    if (!rows.length) return;
    const tbody = $(".tools tbody", card);
    for (const [name, raw, normalized, error] of rows) {
      const tr = document.createElement("tr");
      const cells = [
        name,
        error ? "error: " + error : typeof raw === "number" ? fmt(raw) : String(raw ?? "–"),
        typeof normalized === "number" ? fmt(normalized) : "",
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    $(".tools", card).hidden = false;
  }

  // ------------------------------------------------------------------ wiring
  el.dropZone.addEventListener("click", () => el.fileInput.click());
  el.dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") el.fileInput.click();
  });
  el.fileInput.addEventListener("change", () => {
    if (el.fileInput.files.length) addFiles(Array.from(el.fileInput.files));
    el.fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    el.dropZone.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropZone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    el.dropZone.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropZone.classList.remove("dragging");
    });
  }
  el.dropZone.addEventListener("drop", (e) => {
    const files = Array.from(e.dataTransfer.files || []);
    if (files.length) addFiles(files);
  });
  el.keyInput.addEventListener("change", loadInfo);
  el.assessToggle.addEventListener("change", () => {
    el.questionLabel.hidden = !el.assessToggle.checked;
  });

  loadInfo().catch((err) => showPageError("cannot load server information: " + err));
})();
