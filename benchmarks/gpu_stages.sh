# Sourced by the GPU lease scripts (gpu_lease.sh, gpu_plans.sh), after they set `out` and cd to the repository: a
# results folder holding the machine's description, and stage NAME LIMIT COMMAND... which runs the command under its
# own time limit (unless STAGES="name ..." names others), prints its table or its error, and rewrites
# $out/results.tgz so that a lease cut short still returns what finished. A failing stage does not stop the next.
res=$(mktemp -d)
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$res/machine.txt"

stage() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return; fi
  echo "== $name (limit ${limit} s) start $(date +%T)"
  timeout "$limit" "$@" > "$res/$name.log" 2>&1
  local rc=$?
  echo "== $name exit $rc at $(date +%T)"
  if [ $rc = 0 ]; then grep -E '^\||^  ' "$res/$name.log" | cut -c1-230 | tail -n 30; else tail -n 8 "$res/$name.log"; fi
  tar czf "$out/results.tgz" -C "$res" .
}
