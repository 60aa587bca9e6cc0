#!/bin/bash
# Instruction counts per request under callgrind, in one run: the bare hyper proxy,
# the gateway with no layer (the wiring), with every layer (gateway.sim.toml), and with
# every layer and [observe] (metrics and the status board; and the SQLite log), each minus an idle start
# (and minus the metrics clock's one-off calibration, below). See BENCHMARKS.md.
#   BENCH=target/release/deps/proxy-<hash> GW=target/release/brownout-gateway \
#     [OLD=an-older-brownout-gateway] [N=4000] [PER_LAYER=1] crates/brownout-gateway/benches/callgrind.sh
# PER_LAYER=1 also measures every layer but one, for each layer: its marginal cost.
# ROWS="bare wiring" measures only those rows (default: bare wiring every observe observe-log).
set -u
BENCH=${BENCH:?the proxy bench binary: cargo bench -p brownout-gateway --bench proxy --no-run}
GW=${GW:?the release brownout-gateway binary}
OLD=${OLD:-}   # optional: an older gateway binary, measured in the same run
STATE=${STATE:-} # optional: a Redis URL; every layer again with [state] on it
N=${N:-4000}
SIM=$(cd "$(dirname "$0")/.." && pwd)/gateway.sim.toml
WORK=$(mktemp -d); cd "$WORK"; echo "work: $WORK" >&2
BROWNOUT_BENCH_ROLE=upstream $BENCH > up.out & UP=$!
sleep 1
ADDR=$(sed -n 's/listening on //p' up.out | head -1)
sed -e "s#http://127.0.0.1:8787#http://$ADDR#" -e 's#listen = "127.0.0.1:8080"#listen = "127.0.0.1:0"#' $SIM > every.toml
printf '\n[connections]\nper_client = 100000\ntotal = 100000\n' >> every.toml
# wiring only: every layer off (the queue and limits too), no cascades
python3 - <<'PY'
t=open('every.toml').read()
for l in ['retry','breaker','cache','degrade','queue','limits']:
    t=t.replace(f'\n[{l}]\n', f'\n[{l}]\nenabled = false\n')
out=[];skip=False
for line in t.splitlines():
    if line.startswith('cascade = ['): skip=True
    if not skip: out.append(line)
    if skip and line.startswith(']'): skip=False
open('wiring.toml','w').write('\n'.join(out)+'\n')
every=open('every.toml').read()
for l in ['retry','breaker','cache','degrade','queue']:
    open(f'no-{l}.toml','w').write(every.replace(f'\n[{l}]\n', f'\n[{l}]\nenabled = false\n'))
out=[];skip=False
for line in every.splitlines():
    if line.startswith('cascade = ['): skip=True
    if not skip: out.append(line)
    if skip and line.startswith(']'): skip=False
open('no-fallback.toml','w').write('\n'.join(out)+'\n')
# every layer and [observe]: metrics and the status board, and with the SQLite log too
open('observe.toml','w').write(open('every.toml').read()+'\n[observe]\nmetrics = true\nstatus = true\n')
open('observe-log.toml','w').write(open('every.toml').read()+'\n[observe]\nmetrics = true\nstatus = true\nsqlite = "observe.db"\n')
for n in ['every','wiring']:
    t=open(n+'.toml').read().replace('\n[connections]\nper_client = 100000\ntotal = 100000\n','')
    open(n+'.old.toml','w').write(t)
PY
total() { callgrind_annotate "$1" 2>/dev/null | grep 'PROGRAM TOTALS' | awk '{gsub(",","",$1); print $1}'; }
# With [observe] on, the Prometheus exporter's clock (quanta) calibrates itself once at
# start, spinning for a set time: some 5 to 9 million instructions, a different number in
# each run (about +-500 a request at N=4000 between a run and its idle start). It is a
# start-up cost, not a request's, so each run's count leaves it out.
calibration() {
  local c=$(callgrind_annotate --inclusive=yes "$1" 2>/dev/null | grep 'quanta::Clock::new ' | head -1 | awk '{gsub(",","",$1); print $1}')
  echo ${c:-0}
}
measure() { # name, command...
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=cg.$name.idle "$@" > $name.idle.out 2>/dev/null & local P=$!
  for i in $(seq 1 100); do grep -q "listening on" $name.idle.out 2>/dev/null && break; sleep 0.3; done
  kill -INT $P 2>/dev/null; kill -TERM $P 2>/dev/null; wait $P 2>/dev/null
  valgrind --tool=callgrind --callgrind-out-file=cg.$name "$@" > $name.out 2>/dev/null & P=$!
  for i in $(seq 1 100); do grep -q "listening on" $name.out 2>/dev/null && break; sleep 0.3; done
  local T=$(sed -n 's/.*listening on \(http:\/\/\)\{0,1\}//p' $name.out | head -1)
  env -u BROWNOUT_BENCH_ROLE BROWNOUT_BENCH_ROLE=load BENCH_TARGET=$T BENCH_REQUESTS=$N BENCH_CONNECTIONS=4 $BENCH > $name.load 2>&1
  kill -TERM $P; wait $P 2>/dev/null
  local idle=$(( $(total cg.$name.idle) - $(calibration cg.$name.idle) ))
  local all=$(( $(total cg.$name) - $(calibration cg.$name) ))
  echo "$name $(( (all - idle) / N )) instructions/request  ($(tail -1 $name.load))"
}
export BENCH_UPSTREAM=http://$ADDR/
ROWS=" ${ROWS:-bare wiring every observe observe-log} "
row() { case "$ROWS" in *" $1 "*) return 0;; *) return 1;; esac; }
row bare && BROWNOUT_BENCH_ROLE=bare measure bare $BENCH
for r in wiring every observe observe-log; do
  row $r && measure $r $GW serve --config $r.toml --log-level error
done
if [ -n "${PER_LAYER:-}" ]; then
  for l in degrade cache fallback breaker queue retry; do
    measure no-$l $GW serve --config no-$l.toml --log-level error
  done
fi
if [ -n "$STATE" ]; then
  printf '\n[state]\nredis_url = "%s"\ndeployment = "bench"\n' "$STATE" | cat every.toml - > state.toml
  measure every-state $GW serve --config state.toml --log-level error
fi
if [ -n "$OLD" ]; then
  measure wiring-before $OLD serve --config wiring.old.toml --log-level error
  measure every-before $OLD serve --config every.old.toml --log-level error
fi
kill $UP
