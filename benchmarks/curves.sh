#!/usr/bin/env bash
# The quality-versus-speed curves of docs/results-dit-mnist.md and docs/results-uvit-mnist.md, one per invocation,
# from routers to sweep:
#   benchmarks/curves.sh dit-mnist-ddim50 baselines   every baseline and the L2C router  -> sweeps/<curve>
#   benchmarks/curves.sh dit-mnist-ddim50 learned     learned schedules beside TaylorSeer -> sweeps/<curve>-learned
#   benchmarks/curves.sh dit-mnist-ddim50 budgets     learned schedules at 1.5x, 2x, 2.5x, 3x, 4x fewer MACs (Newton
#                                                      form, checked moves) beside Newton-form TaylorSeer -> sweeps/<curve>-budgets
# (curves: dit-mnist-ddim20, dit-mnist-ddim50, uvit-mnist-nfe20, uvit-mnist-nfe50). Both parts sample the same seeds,
# and each measures its own uncached reference. Routers go to routers/; an existing router file is kept, and a sweep
# resumes from its record when re-run. Run one at a time on an otherwise idle machine: the sweep times every method.
# SEARCH_ROUNDS (default 1) sets the rounds of the schedule search; IMAGES (default 1000) the images per point;
# BUDGETS (default "0.667 0.5 0.4 0.333 0.25") the MAC fractions of the budgets part.
set -euo pipefail
curve=${1:?usage: benchmarks/curves.sh CURVE baselines|learned}
part=${2:-baselines}
images=${IMAGES:-1000}
mkdir -p routers sweeps

case "$curve" in
  dit-mnist-ddim20)
    model=dit-mnist; steps=20; prefix=dit20; schedules="0.365 0.36"; starts=3
    values=(fewer-steps=16,12,10,8,7 dpm-solver-2m=20,12,8,6 fora=2,3 taylorseer-o1=2,3,4 taylorseer-o2=2,3,4
            first-block=0.05,0.12,0.3 l2c=0.5) ;;
  dit-mnist-ddim50)
    # the learned target sits just above TaylorSeer order 2 at N = 5 (0.2141): the search starts from it
    model=dit-mnist; steps=50; prefix=dit50; schedules="0.215"; starts=5
    values=(fewer-steps=40,30,25,20,15,12 dpm-solver-2m=20,12,10,8 fora=2,3,4 taylorseer-o1=3,4,5
            taylorseer-o2=3,4,5,6 first-block=0.05,0.12 l2c=0.5) ;;
  uvit-mnist-nfe20)
    model=uvit-mnist; steps=20; prefix=uvit20; schedules="0.40 0.305"; starts=3,4
    values=(fewer-steps=16,12,10,8 dpm-solver-2m=20,12,10,8,6 fora=2,3 taylorseer-o1=2,3,4 taylorseer-o2=2,3,4
            first-block=0.05,0.12 l2c=0.5) ;;
  uvit-mnist-nfe50)
    model=uvit-mnist; steps=50; prefix=uvit50; schedules="0.315 0.26"; starts=4,5
    values=(fewer-steps=40,30,20,12 dpm-solver-2m=12,10,8 fora=2,3,4 taylorseer-o1=3,5
            taylorseer-o2=3,4,5 first-block=0.05,0.12 l2c=0.5) ;;
  *) echo "unknown curve $curve" >&2; exit 2 ;;
esac

router=routers/$prefix-0.5.safetensors
[ -f "$router" ] || l2c train-router --model $model --steps $steps --target-removal 0.5 --out "$router"
if [ "$part" = baselines ]; then
  value_args=()
  for v in "${values[@]}"; do value_args+=(--values "$v"); done
  methods=$(printf '%s\n' "${values[@]}" | cut -d= -f1 | tr '\n' ' ')
  l2c compare --sweep --model $model --steps $steps --router "$router" --methods $methods "${value_args[@]}" \
    --images "$images" --out "sweeps/$curve"
elif [ "$part" = learned ] || [ "$part" = budgets ]; then
  if [ "$part" = learned ]; then
    # TaylorSeer order 2 at the intervals the searches start from, measured in the same run
    name=schedule; targets=$schedules; compare=(--methods taylorseer-o2 learned --values taylorseer-o2=$starts)
  else
    name=budget; targets=${BUDGETS:-0.667 0.5 0.4 0.333 0.25}
    compare=(--methods taylorseer-o2-newton learned --values taylorseer-o2-newton=2,3,4,5)
  fi
  schedule_files=()
  for target in $targets; do
    file=routers/$prefix-$name-$target.safetensors
    [ -f "$file" ] || l2c train-router --model $model --steps $steps --target-macs "$target" \
      --search-rounds "${SEARCH_ROUNDS:-1}" --out "$file"
    schedule_files+=("$file")
  done
  l2c compare --sweep --model $model --steps $steps --router "$router" --schedule-routers "${schedule_files[@]}" \
    "${compare[@]}" --images "$images" --out "sweeps/$curve-$part"
else
  echo "unknown part $part (baselines | learned | budgets)" >&2; exit 2
fi
