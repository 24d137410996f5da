// The prompt browser of an expo tune report: every prompt's responses side by side, sorted and filtered.
// Every text from the run is untrusted: it reaches the page through textContent only, never as markup.
"use strict";

const data = JSON.parse(document.getElementById("tune-data").textContent);
const PAGE = 40;
let shown = PAGE;

function mean(values) {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

// Per prompt: mean reward and length of each candidate, and the measures the sort menu offers.
for (const prompt of data.prompts) {
  prompt.reward = {};
  prompt.tokens = {};
  for (const [alpha, samples] of Object.entries(prompt.responses)) {
    prompt.reward[alpha] = mean(samples.map((s) => s.reward));
    prompt.tokens[alpha] = mean(samples.map((s) => s.tokens));
  }
  const rewards = Object.values(prompt.reward);
  const other = data.compared; // the chosen α, or the best other when α = 0 is chosen (never 0 with itself)
  prompt.gain = other in prompt.reward ? prompt.reward[other] - prompt.reward[data.baseline] : 0;
  prompt.spread = Math.max(...rewards) - Math.min(...rewards);
  prompt.lengthChange = other in prompt.tokens ? prompt.tokens[other] - prompt.tokens[data.baseline] : 0;
  prompt.haystack = [prompt.text, ...Object.values(prompt.responses).flat().map((s) => s.text)]
    .join("\n")
    .toLowerCase();
}

// Words of `text`, each marked when the baseline's response does not have it at that point (a word-level LCS diff).
function diffWords(text, baseline) {
  const a = baseline.split(/(\s+)/).filter((w) => w.trim());
  const b = text.split(/(\s+)/).filter((w) => w.trim());
  if (a.length * b.length > 4e6) return b.map((word) => ({ word, changed: false }));
  const table = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
    }
  }
  const words = [];
  let i = 0;
  let j = 0;
  while (j < b.length) {
    if (i < a.length && a[i] === b[j]) {
      words.push({ word: b[j], changed: false });
      i++;
      j++;
    } else if (i < a.length && table[i + 1][j] >= table[i][j + 1]) {
      i++;
    } else {
      words.push({ word: b[j], changed: true });
      j++;
    }
  }
  return words;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function responseCell(alpha, sample, baseline, label) {
  const cell = element("div", "response" + (alpha === data.chosen ? " chosen" : ""));
  const head = `α = ${alpha}${label} · reward ${sample.reward.toPrecision(4)} · ${sample.tokens} tokens`;
  cell.appendChild(element("div", "response-head", head));
  if (sample.finish === "length") cell.appendChild(element("span", "cut", "cut at the token limit"));
  const body = element("div", "text");
  body.dir = "auto";
  if (alpha === data.baseline || baseline === undefined) {
    body.textContent = sample.text;
  } else {
    for (const { word, changed } of diffWords(sample.text, baseline)) {
      body.appendChild(changed ? element("mark", null, word) : document.createTextNode(word));
      body.appendChild(document.createTextNode(" "));
    }
  }
  cell.appendChild(body);
  for (const verdict of sample.verdicts || []) {  // a pairwise judge's raw answers, both orders
    cell.appendChild(element("div", "verdict-raw", `judge, ${verdict.order}: ${verdict.verdict} (“${verdict.raw}”)`));
  }
  return cell;
}

function promptCard(prompt) {
  const card = element("section", "prompt");
  card.dataset.index = prompt.index;
  const title = `Prompt ${prompt.index} (${prompt.part}) · gain ${prompt.gain.toPrecision(3)}`;
  card.appendChild(element("h3", null, title));
  const text = element("div", "text prompt-text", prompt.text);
  text.dir = "auto";
  card.appendChild(text);
  const samples = Math.max(...Object.values(prompt.responses).map((s) => s.length));
  for (let s = 0; s < samples; s++) {
    const row = element("div", "responses");
    const baseline = (prompt.responses[data.baseline] || [])[s];
    for (const alpha of data.alphas) {
      const sample = (prompt.responses[alpha] || [])[s];
      const label = samples > 1 ? ` · sample ${s + 1}` : "";
      if (sample) row.appendChild(responseCell(alpha, sample, baseline && baseline.text, label));
    }
    card.appendChild(row);
  }
  return card;
}

const ORDERS = {
  "gain-ascending": (a, b) => a.gain - b.gain,
  "gain-descending": (a, b) => b.gain - a.gain,
  spread: (a, b) => b.spread - a.spread,
  length: (a, b) => Math.abs(b.lengthChange) - Math.abs(a.lengthChange),
  index: (a, b) => a.index - b.index,
};

function render() {
  const query = document.getElementById("filter").value.trim().toLowerCase();
  const order = document.getElementById("order").value;
  const matching = data.prompts.filter((p) => !query || p.haystack.includes(query));
  matching.sort((a, b) => ORDERS[order](a, b) || a.index - b.index);
  const list = document.getElementById("prompts");
  list.replaceChildren(...matching.slice(0, shown).map(promptCard));
  document.getElementById("count").textContent = `${matching.length} of ${data.prompts.length} prompts`;
  document.getElementById("more").hidden = matching.length <= shown;
}

document.getElementById("filter").addEventListener("input", () => {
  shown = PAGE;
  render();
});
document.getElementById("order").addEventListener("change", () => {
  shown = PAGE;
  render();
});
document.getElementById("more").addEventListener("click", () => {
  shown += PAGE;
  render();
});
document.getElementById("worst").addEventListener("click", () => {
  document.getElementById("order").value = "gain-ascending";
  shown = PAGE;
  render();
  document.getElementById("browser").scrollIntoView();
});
render();
