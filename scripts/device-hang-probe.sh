#!/usr/bin/env bash
# Runs one command with a time limit; if it is still running at the limit, prints every thread's
# state and stack (gdb when the machine has it, else /proc: state, wchan, the syscall) before
# killing it. For hangs seen only on the GPU machine.
# Usage: scripts/device-hang-probe.sh SECONDS command...
set -uo pipefail
limit=$1; shift
t0=$SECONDS
"$@" &
pid=$!
while kill -0 "$pid" 2>/dev/null && (( SECONDS - t0 < limit )); do sleep 1; done
if kill -0 "$pid" 2>/dev/null; then
  echo "== still running after ${limit}s: pid $pid"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  if [[ -z ${NO_GDB:-} ]] && command -v gdb >/dev/null; then
    gdb -p "$pid" -batch -ex "set pagination off" -ex "thread apply all bt 12" 2>/dev/null | grep -v "^\[New LWP\|^$" | head -400
  else
    threads=()
    for t in /proc/"$pid"/task/*; do
      [[ $(awk '{print $3}' "$t"/stat) == R || ${t##*/} == "$pid" ]] && threads+=("${t##*/}")
      printf '%s %s state=%s wchan=%s syscall=%s\n' "${t##*/}" "$(cat "$t"/comm)" "$(awk '{print $3}' "$t"/stat)" \
        "$(cat "$t"/wchan 2>/dev/null)" "$(cut -d' ' -f1 "$t"/syscall 2>/dev/null)"
    done
    # No gdb: the running threads' and the main thread's stacks, sampled twice, through ptrace.
    sampler=/tmp/tandem-stack-sample
    [ -x $sampler ] || cc -O1 -o $sampler "$(dirname "$0")/stack-sample.c"
    for round in 1 2; do
      timeout 10 "$sampler" "$pid" "${threads[@]}" > /tmp/tandem-stack-sample.txt || echo "  (the sampler timed out: a thread stuck in the kernel never reaches its ptrace stop)"
      # One addr2line per binary and sample: it reads the binary's symbols once.
      awk '$1 != "thread" && $2 !~ /\.so/ {print $2}' /tmp/tandem-stack-sample.txt | sort -u | while read -r bin; do
        awk -v b="$bin" '$2 == b {print $3}' /tmp/tandem-stack-sample.txt | addr2line -f -C -s -e "$bin" |
          awk 'NR % 2 == 1' > "/tmp/tandem-stack-names.${bin//\//_}"
      done
      declare -A seen=()
      while read -r where path offset; do
        if [[ $where == thread ]]; then echo "thread $path (sample $round)"; continue; fi
        if [[ $path == *.so* || $path == \? ]]; then echo "  $where ${path##*/}"; continue; fi
        n=${seen[$path]:-0}; seen[$path]=$((n + 1))
        echo "  $where $(sed -n "$((n + 1))p" "/tmp/tandem-stack-names.${path//\//_}" | cut -c1-160)"
      done < /tmp/tandem-stack-sample.txt
      unset seen
      sleep 0.5
    done
  fi
  kill -9 "$pid"
  wait "$pid" 2>/dev/null
  exit 124
fi
wait "$pid"
rc=$?
echo "== rc=$rc $((SECONDS - t0))s"
exit $rc
