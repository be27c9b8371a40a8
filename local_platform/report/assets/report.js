// The fleet report's drawing code (local_platform/report/html.py inlines it with plotly.js).
const errors = [];
function noteError(message) {
  errors.push(String(message));
  document.body.dataset.errors = String(errors.length);
  const box = document.getElementById('errors');
  box.style.display = 'block';
  box.textContent = 'Report error: ' + errors.join(' | ');
}
window.addEventListener('error', e => noteError(e.message));
const consoleError = console.error.bind(console);
console.error = (...args) => { noteError(args.join(' ')); consoleError(...args); };
window.addEventListener('unhandledrejection', e => noteError(e.reason));
const DATA = JSON.parse(document.getElementById('report-data').textContent);
const COLORS = ['#1d3557','#e63946','#2a9d8f','#f4a261','#6a4c93','#457b9d','#8ab17d','#e76f51',
                '#264653','#b5838d','#ffb703','#8d99ae','#06d6a0','#9c6644','#ef476f','#118ab2'];
const layoutBase = {margin:{l:50,r:16,t:10,b:40}, font:{size:11}, legend:{orientation:'h'}};
function inScope(machine) {
  const scope = document.getElementById('scope').value;
  return scope === '*' || machine === scope || (scope.endsWith('-') && machine.startsWith(scope));
}
// plotly.js 3 draws an axis title only as {text: ...} (a bare string is ignored, silently)
function axisTitles(layout) {
  for (const [key, axis] of Object.entries(layout)) {
    if (/^[xy]axis/.test(key) && axis && typeof axis.title === 'string') {
      layout[key] = Object.assign({}, axis, {title: {text: axis.title}});
    }
  }
  return layout;
}
async function plot(name, traces, layout) {
  const div = document.querySelector(`.chart[data-panel="${name}"]`);
  if (!div || div.dataset.missing) return;
  await Plotly.react(div, traces, axisTitles(Object.assign({}, layoutBase, layout || {})),
                     {displaylogo:false, responsive:true});
  const points = traces.reduce((n, t) => n + ((t.y || t.values || t.r || [t.value]).length || 0), 0);
  div.dataset.rendered = String(points);
}
function drawPumps() {
  const r = DATA.readings;
  const metric = document.getElementById('metric').value;
  if (r.available) {
    const traces = Object.keys(r.series).filter(inScope).map((m, i) => ({
      x: r.bins, y: r.series[m][metric] || [], name: m, mode: 'lines', type: 'scatter',
      line: {width: 1.2, color: COLORS[i % COLORS.length]}}));
    const lim = r.limits[metric] || {};
    const shapes = ['min', 'max'].filter(k => lim[k] !== null && lim[k] !== undefined).map(k => ({
      type: 'line', xref: 'paper', x0: 0, x1: 1, y0: lim[k], y1: lim[k],
      line: {dash: 'dot', color: '#c0392b', width: 1}}));
    plot('readings', traces, {yaxis: {title: metric + ' (' + (lim.unit || '') + ')'}, shapes,
                              showlegend: traces.length <= 10});
    const machines = Object.keys(r.latest).filter(inScope);
    const metrics = Object.keys(r.limits).filter(k => machines.some(m => k in r.latest[m]));
    const indicators = metrics.map((k, i) => {
      const values = machines.map(m => r.latest[m][k]).filter(v => v !== undefined);
      const mean = values.reduce((a, b) => a + b, 0) / Math.max(values.length, 1);
      const lim = r.limits[k];
      const top = lim.max !== null ? lim.max * 1.2 : Math.max(...values) * 1.5;
      return {type: 'indicator', mode: 'number+gauge', value: mean,
              title: {text: k + '<br><span style="font-size:10px">' + lim.unit + '</span>'},
              number: {valueformat: '.1f'},
              gauge: {shape: 'bullet', axis: {range: [0, top]},
                      threshold: {value: lim.max !== null ? lim.max : top, line: {color: '#c0392b', width: 2}}},
              domain: {x: [0.25, 1], y: [i / metrics.length + 0.02, (i + 1) / metrics.length - 0.04]}};
    });
    plot('indicators', indicators, {margin: {l: 10, r: 20, t: 10, b: 10}});
  }
  const s = DATA.scatter;
  if (s.available) {
    const idx = s.machine.map((m, i) => inScope(m) ? i : -1).filter(i => i >= 0);
    const group = flag => idx.filter(i => s.anomaly[i] === flag);
    const trace = (rows, name, color) => ({x: rows.map(i => s.pressure[i]), y: rows.map(i => s.temperature[i]),
      mode: 'markers', type: 'scatter', name, marker: {size: 4, color, opacity: 0.6},
      text: rows.map(i => s.machine[i])});
    plot('scatter', [trace(group(false), 'normal', '#457b9d'), trace(group(true), 'anomaly', '#e63946')],
         {xaxis: {title: 'pressure (bar)'}, yaxis: {title: 'temperature (degC)'}});
  }
  const a = DATA.anomalies;
  if (a.available) {
    const machines = Object.keys(a.counts).filter(inScope).sort();
    const sources = [...new Set(machines.flatMap(m => Object.keys(a.counts[m])))];
    plot('anomalies', sources.map((src, i) => ({type: 'bar', name: src, x: machines,
      y: machines.map(m => a.counts[m][src] || 0), marker: {color: COLORS[i + 1]}})),
      {barmode: 'group', yaxis: {title: 'count (log scale)', type: 'log', dtick: 1},
       xaxis: {tickangle: -60, automargin: true}, margin: {l: 50, r: 16, t: 30, b: 90},
       legend: {orientation: 'h', x: 0, y: 1.02, yanchor: 'bottom'}});
  }
}
function drawRisk() {
  const r = DATA.risk;
  if (!r.available) return;
  const ranked = Object.entries(r.machines).sort((a, b) => (b[1].last || 0) - (a[1].last || 0));
  // red: at or above the model's alert threshold (a job is planned), amber: above half of it
  const alertAt = DATA.plan.alert_threshold || 0.8;
  plot('risk', [{type: 'bar', x: ranked.map(e => e[0]), y: ranked.map(e => e[1].last || 0),
    marker: {color: ranked.map(e => (e[1].last || 0) >= alertAt ? '#e63946' : (e[1].last || 0) >= alertAt / 2 ? '#f4a261' : '#2a9d8f')}}],
    {yaxis: {title: 'p(failure within 24 h)', range: [0, 1]},
     shapes: [{type: 'line', xref: 'paper', x0: 0, x1: 1, y0: alertAt, y1: alertAt, line: {dash: 'dot', color: '#c0392b'}}],
     annotations: [{xref: 'paper', x: 1, y: alertAt, xanchor: 'right', yanchor: 'bottom', showarrow: false,
                    text: 'alert threshold ' + alertAt.toFixed(2), font: {color: '#c0392b'}}]});
  plot('risk-trend', ranked.slice(0, 5).map((e, i) => ({type: 'scatter', mode: 'lines', name: e[0],
    x: e[1].times, y: e[1].probabilities, line: {color: COLORS[i]}})),
    {yaxis: {title: 'probability', range: [0, 1]}});
}
function drawOthers() {
  const d = DATA.data_path;
  if (d.available && (d.contract_quarantine || d.lake_quarantine || d.gateway_quarantine)) {
    const traces = [];
    if (d.contract_quarantine) traces.push({type: 'bar', name: 'contract (JSON payloads)',
      x: Object.keys(d.contract_quarantine), y: Object.values(d.contract_quarantine), marker: {color: '#f4a261'}});
    Object.entries(d.gateway_quarantine || {}).forEach(([gateway, reasons], i) => traces.push({type: 'bar',
      name: 'gateway ' + gateway + ' (SensorBuffer)', x: Object.keys(reasons), y: Object.values(reasons),
      marker: {color: ['#e76f51', '#2a9d8f', '#264653', '#e9c46a'][i % 4]}}));
    if (d.lake_quarantine) traces.push({type: 'bar', name: 'lake silver quarantine',
      x: Object.keys(d.lake_quarantine), y: Object.values(d.lake_quarantine), marker: {color: '#6a4c93'}});
    plot('quarantine', traces, {barmode: 'group', xaxis: {title: 'reason (field)'}, yaxis: {title: 'rejected'}});
  }
  const c = DATA.cost;
  if (c.available) {
    const envs = Object.keys(c.environments);
    const columns = envs.map(e => [e, 'as deployed', c.environments[e].by_service_per_machine]);
    // services in the order of prod's bill, each its own colour
    const services = [...new Set(columns.slice().reverse().flatMap(col => Object.keys(col[2])))];
    const x = [columns.map(col => col[0]), columns.map(col => col[1])];
    const traces = services.map((svc, i) => ({type: 'bar', name: svc, x, y: columns.map(col => col[2][svc] || 0),
      marker: {color: COLORS[i % COLORS.length]}}));
    plot('cost', traces, {barmode: 'stack', yaxis: {title: 'USD per machine a month'},
      shapes: [{type: 'line', xref: 'paper', x0: 0, x1: 1, y0: 27, y1: 27, line: {dash: 'dot', color: '#c0392b'}}],
      annotations: [{xref: 'paper', x: 1, y: 27, xanchor: 'right', yanchor: 'bottom', showarrow: false,
                     text: 'goal at prod scale: $27', font: {color: '#c0392b'}}]});
  }
  const w = DATA.whatif;
  if (w.available) {
    const arms = ['run_to_failure', 'predictive'];
    plot('whatif', [
      {type: 'bar', name: 'unplanned downtime (failures)', x: ['run to failure', 'acting on alerts'],
       y: arms.map(a => w[a].unplanned_h), marker: {color: '#e63946'}},
      {type: 'bar', name: 'planned maintenance', x: ['run to failure', 'acting on alerts'],
       y: arms.map(a => w[a].planned_h), marker: {color: '#2a9d8f'}}],
      {barmode: 'stack', yaxis: {title: 'machine-hours of downtime'}});
  }
}
async function loadPlotly() {
  if (typeof DecompressionStream === 'undefined') {
    throw new Error('this browser cannot unpack the charts (DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)');
  }
  const b64 = document.getElementById('plotly-gz').textContent.trim();
  const bytes = Uint8Array.from(atob(b64), ch => ch.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  const code = await new Response(stream).text();
  const script = document.createElement('script');
  script.textContent = code;
  document.head.appendChild(script);
}
loadPlotly().then(() => {
  drawPumps(); drawRisk(); drawOthers();
  document.getElementById('scope').addEventListener('change', drawPumps);
  document.getElementById('metric').addEventListener('change', drawPumps);
  document.body.dataset.ready = '1';
}).catch(e => noteError(e.message || e));
