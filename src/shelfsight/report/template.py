# ruff: noqa: E501 - HTML lines are kept whole, so the markup reads as it renders
"""The HTML report's Jinja2 template, kept in the package as a string: one self-contained page,
no external CSS, script or font, links only to anchors inside the page."""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shelfsight report · {{ r.run.name }}</title>
<style>
  :root { --ok: #1a7f37; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; }
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328;
         line-height: 1.45; }
  header { background: #24292f; color: white; padding: 14px 28px; }
  header h1 { margin: 0; font-size: 1.35rem; }
  header p { margin: 4px 0 0; color: #d0d7de; font-size: 0.9rem; }
  nav { padding: 8px 28px; border-bottom: 1px solid var(--line); background: var(--soft); font-size: 0.88rem; }
  nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
  main { padding: 0 28px 40px; max-width: 1400px; }
  h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 34px; }
  h3 { margin-bottom: 6px; }
  table { border-collapse: collapse; font-size: 0.85rem; margin: 6px 0 14px; }
  th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
  th { background: var(--soft); text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.best { font-weight: 700; background: #dafbe1; }
  .std, .ci { color: var(--muted); font-weight: 400; font-size: 0.8em; }
  .tie { color: #9a6700; font-weight: 700; }
  .answer { font-size: 1.1em; margin: 6px 0; }
  .headline { background: #ddf4ff; border: 1px solid #54aeff; border-radius: 6px; padding: 10px 16px;
              margin: 14px 0; }
  .headline li { margin: 4px 0; }
  .verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8rem; font-weight: 600;
             white-space: nowrap; }
  .agree { background: #dafbe1; color: var(--ok); }
  .disagree { background: #ffebe9; color: var(--bad); }
  .not-measured { background: #eaeef2; color: var(--muted); }
  .absent { color: var(--muted); font-style: italic; }
  .category { font-size: 0.88rem; color: var(--muted); }
  .category.warn { color: #9a6700; background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px;
                   padding: 6px 10px; }
  figure { margin: 10px 0 20px; }
  figure img { max-width: 100%; border: 1px solid var(--line); }
  figcaption { color: var(--muted); font-size: 0.85rem; }
  .queries { display: flex; flex-wrap: wrap; gap: 10px; }
  .query { border: 1px solid var(--line); border-radius: 6px; padding: 8px; display: flex; flex: 0 1 auto;
           gap: 14px; align-items: flex-start; }
  .query .probe { text-align: center; font-size: 0.75rem; width: 96px; flex: none; word-break: break-all; }
  .query .rows td { border: none; padding: 2px 4px; vertical-align: middle; }
  .thumb { width: 64px; height: 64px; object-fit: cover; border: 3px solid transparent; border-radius: 3px;
           display: block; }
  .hit { border-color: #2da44e; }
  .miss { border-color: #cf222e; }
  .query-thumb { width: 80px; height: 80px; border-color: #24292f; margin: 0 auto 4px; }
  .rowlabel { font-size: 0.78rem; white-space: nowrap; }
  .scroll { overflow-x: auto; max-width: 100%; }
  .scroll > table { margin-bottom: 6px; }
  .cap { font-size: 0.7rem; line-height: 1.15; width: 70px; text-align: center; overflow-wrap: anywhere;
         color: var(--muted); }
  .cap .key { color: #1f2328; }
  .fuller pre { max-height: none; }
  pre { background: var(--soft); padding: 10px; overflow-x: auto; font-size: 0.8rem; max-height: 420px; }
  details summary { cursor: pointer; color: #0969da; }
</style>
</head>
<body>
<header>
  <h1>shelfsight report · {{ r.run.name }}</h1>
  <p>{{ r.datasets | length }} dataset(s): {{ r.datasets | join(", ") }} ·
     {{ models | length }} model(s) · strategies {{ strategies | join(", ") }} ·
     {{ ok_cells }} cell(s) ok{% if r.run.failed %}, <strong>{{ r.run.failed | length }} failed</strong>{% endif %}{% if r.run.stale %}, <a href="#tests" style="color:#d0d7de">{{ r.run.stale | length }} stale left out</a>{% endif %} ·
     generated {{ r.generated }} from {{ r.run.run_dir }}</p>
</header>
<nav>
{% for id, title in sections %}<a href="#{{ id }}">{{ title }}</a>{% endfor %}
</nav>
<main>

<section id="recommendation">
<div class="answers">
{% for line in answers %}<p class="answer"><strong>{{ line }}</strong></p>
{% endfor %}
</div>
{% if commands %}<div class="next"><p><strong>Serve the choice</strong> (copy, paste, run; the page is then at
http://127.0.0.1:PORT/):</p>
<pre class="commands">{% for c in commands %}{{ c.lines() | join("\n") }}
{% endfor %}</pre></div>{% endif %}
<h2>Recommendation</h2>
{% if not r.datasets %}<p class="absent">No result to recommend from: no cell finished; see <a href="#failed">Failed cells</a>.</p>{% endif %}
<div class="headline"><ul>
{% for rec in headline %}<li>{{ describe(rec) }}</li>
{% endfor %}
{% for line in consensus %}<li>{{ line }}</li>
{% endfor %}
</ul></div>
<p>Per task, dataset and budget, the best measured (model, strategy) with its mean (± standard deviation over seeds
where the cell is stochastic and repeated; n = seeds, 1 for a deterministic cell) and its 95% bootstrap interval in
brackets, the runner-up, and whether the lead is significant: a paired permutation test on the same queries,
Holm-corrected over the run's one family of comparisons (<a href="#tests">Tests and scope</a>), with the interval of
the difference at 1 - alpha excluding zero; otherwise the two are tied within noise. Visual search is decided by the main retrieval protocol's metric, auto-tagging by
classification accuracy. Budgets:
{% for tier in tiers %}<em>{{ tier.name }}</em> ({{ tier.description }}){{ "; " if not loop.last else "." }}{% endfor %}
</p>
{% for dataset in r.datasets %}{% for task in tasks %}
<h3>{{ task | capitalize }} · {{ dataset }}</h3>
{% if task == tasks[0] %}{% for warning in r.category_of(dataset) %}<p class="category warn">{{ warning }}</p>{% else %}<p class="category">{{ category_rule }}</p>{% endfor %}{% endif %}
{% set recs = recs_for(task, dataset) %}
{% if recs and recs[0].metric %}
<div class="scroll"><table>
<tr><th>budget</th><th>choice</th><th>family</th><th>{{ recs[0].protocol }} {{ recs[0].metric }}</th>
    <th>also</th><th>runner-up and lead</th><th>cost</th></tr>
{% for rec in recs %}
<tr>
  <td>{{ rec.tier.name }}</td>
  {% if rec.best %}
  <td><strong>{{ rec.best.label }}</strong></td><td>{{ rec.best.family }}</td>
  <td class="num">{{ "%.3f" | format(rec.best.mean) }}{% if rec.best.n > 1 %} <span class="std">± {{ "%.3f" | format(rec.best.std) }}</span>{% endif %} <span class="std">n={{ rec.best.n }}</span></td>
  <td>{% for m, v in rec.best.also.items() %}{{ m }} {{ "%.3f" | format(v) }}{{ ", " if not loop.last }}{% endfor %}</td>
  <td>{{ margin_note(rec) }}</td>
  <td>{% for name, value in rec.best.costs.items() %}{{ format_cost(name, value) }}{{ "; " if not loop.last }}{% endfor %}</td>
  {% else %}
  <td colspan="6" class="absent">{{ rec.reason }}</td>
  {% endif %}
</tr>
{% endfor %}
</table></div>
{% else %}<p class="absent">No {{ task }} results on {{ dataset }}.</p>{% endif %}
{% endfor %}{% endfor %}

<h3>Against the paper's guidance</h3>
<p>Czerwinska, Bircanoglu and Chamoux (arXiv 2504.07567) recommend contrastive text-image models with top-tuning for
retrieval, fine-tuned supervised models for classification, and top-tuning as the cheap middle ground. Each claim,
checked on this run's numbers:</p>
<table>
<tr><th>claim</th><th>dataset</th><th>verdict</th><th>evidence</th></tr>
{% for check in r.recommendations.checks %}
<tr><td>{{ check.claim }}</td><td>{{ check.dataset }}</td>
<td><span class="verdict {{ check.verdict | replace(' ', '-') }}">{{ check.verdict }}</span></td>
<td>{{ check.evidence }}</td></tr>
{% endfor %}
</table>
</section>

<section id="leaderboard">
<h2>Leaderboard</h2>
<p>Mean over seeds (± standard deviation when repeated; deterministic cells run once). The ranking metric (first
column) shows its 95% bootstrap interval over queries in brackets; the best value of each column is highlighted, and
<span class="tie">≈</span> marks a cell not significantly below the best (paired permutation test on the same queries,
Holm-corrected over the run's one family). Costs are shown, not ranked.</p>
{% for board in r.boards %}
<h3 id="board-{{ slug(board.dataset, board.protocol) }}">{{ board.dataset }} · {{ board.protocol }}</h3>
<div class="scroll"><table class="leaderboard" data-dataset="{{ board.dataset }}" data-protocol="{{ board.protocol }}">
<tr><th>model</th><th>strategy</th>{% for m in board.metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for model, strategy, cells in board.rows %}
<tr><td>{{ model }}</td><td>{{ strategy }}</td>
{% for c in cells %}<td class="num{{ ' best' if c.best }}" data-metric="{{ c.metric }}" data-value="{{ c.value | tojson }}">{{ number(c.value, c.metric) }}{% if c.std > 0 %} <span class="std">± {{ "%.3f" | format(c.std) }}</span>{% endif %}{% if c.has_interval %} <span class="ci">[{{ "%.3f" | format(c.low) }}, {{ "%.3f" | format(c.high) }}]</span>{% endif %}{% if c.tied %} <span class="tie" title="not significantly below the best">≈</span>{% endif %}</td>{% endfor %}
</tr>
{% endfor %}
</table></div>
{% endfor %}
{% if not r.boards %}<p class="absent">The results table is empty: no cell finished.</p>{% endif %}
</section>

<section id="per-dataset">
<h2>Per dataset: model x strategy</h2>
<p>Each retrieval protocol's main metric and classification accuracy;
error bars: the 95% bootstrap interval over queries (and seeds, where a cell has several).</p>
{% for plot in r.bars %}
<figure><img alt="{{ plot.title }}" src="{{ uri(plot) }}"><figcaption>{{ plot.title }}</figcaption></figure>
{% endfor %}
</section>

<section id="gains">
<h2>Gain of each adaptation over the pre-trained embedding</h2>
{% if r.gains_plot %}
<figure><img alt="adaptation gains" src="{{ uri(r.gains_plot) }}">
<figcaption>Bars: mean gain of the family's backbones on the main retrieval metric; dots: each backbone.</figcaption>
</figure>
<table>
<tr><th>dataset</th><th>family</th><th>adaptation</th><th>mean gain</th><th>min</th><th>max</th><th>backbones</th></tr>
{% for row in r.family_gains.itertuples() %}
<tr><td>{{ row.dataset }}</td><td>{{ row.family }}</td><td>{{ row.adaptation }}</td>
<td class="num">{{ "%+.3f" | format(row.mean) }}</td><td class="num">{{ "%+.3f" | format(row.min) }}</td>
<td class="num">{{ "%+.3f" | format(row.max) }}</td><td class="num">{{ row.models }}</td></tr>
{% endfor %}
</table>
<details><summary>Per backbone</summary>
<table>
<tr><th>dataset</th><th>model</th><th>family</th><th>adaptation</th><th>pretrained</th><th>adapted</th><th>gain</th><th>relative</th></tr>
{% for row in r.gains.itertuples() %}
<tr><td>{{ row.dataset }}</td><td>{{ row.model }}</td><td>{{ row.family }}</td><td>{{ row.adaptation }}</td>
<td class="num">{{ "%.3f" | format(row.pretrained) }}</td><td class="num">{{ "%.3f" | format(row.adapted) }}</td>
<td class="num">{{ "%+.3f" | format(row.gain) }}</td><td class="num">{{ "%+.0f%%" | format(100 * row.relative_gain) }}</td></tr>
{% endfor %}
</table>
</details>
{% else %}<p class="absent">Not shown: {{ r.absent["gains"] }}.</p>{% endif %}
</section>

<section id="cost">
<h2>Quality against cost</h2>
<p>Every (model, strategy) on the task's deciding metric against tuning time, extraction throughput, backbone
parameters and index size. The dashed line is the Pareto front: the choices no other choice beats on both axes.
Strategies that train nothing count 0 s of tuning.</p>
{% for plot in r.cost_plots %}
<figure><img alt="{{ plot.title }}" src="{{ uri(plot) }}"><figcaption>{{ plot.title }}: {{ plot.caption }}</figcaption></figure>
{% endfor %}
{% if not r.cost_plots %}<p class="absent">Not shown: {{ r.absent["cost"] }}.</p>{% endif %}
</section>

<section id="cross-tuning">
<h2>Cross-tuning</h2>
{% for plot in r.cross_plots %}
<figure><img alt="{{ plot.title }}" src="{{ uri(plot) }}"><figcaption>{{ plot.title }}: rows tuned on, columns
evaluated on; the diagonal is the dataset's own tuning.</figcaption></figure>
{% endfor %}
{% if not r.cross_plots %}<p class="absent">Not shown: {{ r.absent["cross-tuning"] }}.</p>{% endif %}
</section>

<section id="retrieval-examples">
<h2>Retrieval examples</h2>
<p>The same seeded queries for every model and strategy (main protocol of each dataset), with their top 5
neighbours: <span style="color:#1a7f37">green</span> relevant, <span style="color:#cf222e">red</span> not; under
each, its label and similarity score (cosine).
Rows are ordered by the protocol's main metric.
{% if r.thumbnails_missing %}{{ r.thumbnails_missing }} image(s) could not be read and are shown as grey placeholders.{% endif %}</p>
{% for grid in r.grids %}
<h3 id="grid-{{ slug(grid.dataset) }}">{{ grid.dataset }} · {{ grid.protocol }}</h3>
{% if grid.note %}<p class="absent">Showing {{ grid.note }}.</p>{% endif %}
<div class="queries">
{% for q in grid.queries %}
<div class="query">
  <div class="probe"><img class="thumb query-thumb" alt="query {{ q.query }}" src="{{ q.uri }}">
    <strong>{{ q.key }}</strong></div>
  <table class="rows">
  {% for row in q.rows %}
  <tr><td class="rowlabel">{{ row.label }}<br><span class="std">{{ grid.metric }} {{ "%.3f" | format(row.value) }} · {{ row.hits }}/{{ row.neighbours | length }} relevant</span></td>
  {% for n in row.neighbours %}<td><img class="thumb {{ 'hit' if n.relevant else 'miss' }}" alt="{{ n.key }}"
      title="{{ n.key }} · score {{ '%.3f' | format(n.score) }}" src="{{ n.uri }}">
      <div class="cap"><span class="key">{{ n.key }}</span><br>{{ '%.3f' | format(n.score) }}</div></td>{% endfor %}</tr>
  {% endfor %}
  </table>
</div>
{% endfor %}
</div>
{% endfor %}
{% if not r.grids %}<p class="absent">Not shown: {{ r.absent["retrieval-examples"] }}.</p>{% endif %}
</section>

<section id="confusion">
<h2>Confusion matrix of the best classifier</h2>
{% for c in r.confusions %}
<h3>{{ c.dataset }}: {{ c.label }}, accuracy {{ "%.3f" | format(c.accuracy) }}</h3>
<figure><img alt="{{ c.plot.title }}" src="{{ uri(c.plot) }}"><figcaption>{{ c.plot.caption }}; {{ c.classes }}
classes, summed over {{ c.seeds }} seed(s).</figcaption></figure>
{% if c.top %}
<table><tr><th>true class</th><th>predicted as</th><th>test images</th></tr>
{% for actual, predicted, count in c.top %}<tr><td>{{ actual }}</td><td>{{ predicted }}</td><td class="num">{{ count }}</td></tr>
{% endfor %}</table>
{% endif %}
{% endfor %}
{% if not r.confusions %}<p class="absent">Not shown: {{ r.absent["confusion"] }}.</p>{% endif %}
</section>

<section id="index-recall">
<h2>Vector database against exact search</h2>
<p>Recall@k of the index's top k ({{ index_text }}) against exact nearest neighbours, over every retrieval cell;
1.000 means the database returned exactly the exact top k.</p>
{% if not r.index_recall.empty %}
<table><tr><th>dataset</th><th>protocol</th><th>metric</th><th>minimum</th><th>mean</th><th>cells</th></tr>
{% for row in r.index_recall.itertuples() %}
<tr><td>{{ row.dataset }}</td><td>{{ row.protocol }}</td><td>{{ row.metric }}</td>
<td class="num">{{ "%.4f" | format(row.min) }}</td><td class="num">{{ "%.4f" | format(row.mean) }}</td>
<td class="num">{{ row.cells }}</td></tr>
{% endfor %}</table>
{% else %}<p class="absent">Not shown: {{ r.absent["index-recall"] }}.</p>{% endif %}
</section>

{% for extra in r.extras %}
<section id="{{ extra.id }}">
<h2>{{ extra.title }}</h2>
{{ extra.html | safe }}
</section>
{% endfor %}

<section id="tests">
<h2>Tests and scope</h2>
{% for line in r.scope %}<p class="scope">{{ line }}</p>
{% endfor %}
{% if not r.scope %}<p class="absent">No paired comparison in this run.</p>{% endif %}
</section>

<section id="configuration">
<h2>Configuration and versions</h2>
<table>
{% for name, value in versions %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
<details><summary>Run configuration (config.json)</summary><pre>{{ config_text }}</pre></details>
</section>

<section id="failed">
<h2>Failed cells</h2>
{% if r.run.failed %}
<table><tr><th>cell</th><th>error</th></tr>
{% for c in r.run.failed %}<tr><td>{{ c.cell.cell_id }}</td><td>{{ c.error }}</td></tr>
{% endfor %}</table>
{% else %}<p>None: every cell finished.</p>{% endif %}
</section>

</main>
</body>
</html>
"""
