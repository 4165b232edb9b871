#!/usr/bin/env bash
# The cross-voice protocol on Flickr8k dev (docs/results.md, "Any voice"): train on espeak-ng + flite,
# hold festival out, and score the run on the same dev captions in other voices and conditions.
#
#   bash benchmarks/cross_voice_flickr8k.sh data   # step: data | testsets | train | finetune | eval | all
#
# Environment: F8K (../shared/data/flickr8k), DATA (data), RUNS (runs), MINUTES (48), EPOCHS (2),
# FT_MINUTES (100), FT_EPOCHS (2), VGS (vgs). The shipped model is `finetune`'s run (runs/f8k_ft):
# `train` (2 epochs) then `finetune` (2 more, from train's best weights, stronger noise), ~4 epochs in all.
set -euo pipefail
F8K=${F8K:-../shared/data/flickr8k}
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
MINUTES=${MINUTES:-48}
EPOCHS=${EPOCHS:-2}
FT_MINUTES=${FT_MINUTES:-100}
FT_EPOCHS=${FT_EPOCHS:-2}
VGS=${VGS:-vgs}
UNSEEN_ESPEAK=en-us+Andy,en+Annie,en-gb-x-rp+klatt,en-us-nyc+Michael,en-029+aunty,en-gb-scotland+edward,en-us+john,en+linda

data() {  # training data: every caption in two voices, one espeak-ng and one flite (engine-balanced)
  $VGS prepare flickr8k --images "$F8K/images" --captions "$F8K/Flickr8k.token.txt" --out "$DATA/f8k-ef" \
      --engines espeak,flite --voices-per-caption 2
}

testsets() {  # the dev split again: in-pool engines, unseen espeak-ng voices, the held-out engine, corrupted copies
  $VGS prepare respeak "$DATA/f8k-ef" --engines espeak --out "$DATA/x-espeak"
  $VGS prepare respeak "$DATA/f8k-ef" --engines espeak --voices "$UNSEEN_ESPEAK" --rates 140,205 --pitches 28,72 \
      --out "$DATA/x-espeak-unseen"
  $VGS prepare respeak "$DATA/f8k-ef" --engines flite --out "$DATA/x-flite"
  $VGS prepare respeak "$DATA/f8k-ef" --engines festival --out "$DATA/x-festival"
  # festival's ked_diphone alone: its speaker is in no flite voice (festival's kal and slt share speakers with flite's)
  if [ ! -f "$DATA/x-festival-ked/dev.jsonl" ]; then
    mkdir -p "$DATA/x-festival-ked" && cp -al "$DATA/x-festival/audio" "$DATA/x-festival-ked/"
    cp -a "$DATA/x-festival/images" "$DATA/x-festival-ked/"
    grep ked_diphone "$DATA/x-festival/dev.jsonl" > "$DATA/x-festival-ked/dev.jsonl"
  fi
  for base in espeak festival; do
    for effect in noise:10 reverb:0.6 speed:0.9 speed:1.1; do
      $VGS prepare respeak "$DATA/x-$base" --keep-audio --corrupt "$effect" --out "$DATA/x-$base-${effect/:/}"
    done
  done
}

train() {
  $VGS train --data "$DATA/f8k-ef" --out "$RUNS/f8k_voices" --epochs "$EPOCHS" --max-minutes "$MINUTES" \
      --set model.embed_dim=512 --set model.audio_channels=256
}

finetune() {  # continue from train's weights: fresh optimizer and cosine schedule, noise at 0-30 dB on half the batch
  $VGS train --config "$RUNS/f8k_voices/config.yaml" --out "$RUNS/f8k_ft" --epochs "$FT_EPOCHS" --lr 7e-4 \
      --max-minutes "$FT_MINUTES" --set train.warmup_steps=50 --set train.init_from="$RUNS/f8k_voices" \
      --set augment.noise_prob=0.5 --set "augment.snr_db=[0,30]"
}
evaluate() {  # RUN [OUT]: the cross-voice table of one run
  local run=$1 out=${2:-$1/cross_voice}
  local sets=(--set "in-pool dev (espeak+flite)=$DATA/f8k-ef" --set "espeak in-pool=$DATA/x-espeak" --set "espeak unseen voices=$DATA/x-espeak-unseen"
              --set "flite=$DATA/x-flite" --set "festival (held out)=$DATA/x-festival"
              --set "festival ked_diphone only=$DATA/x-festival-ked")
  for base in espeak festival; do
    for effect in noise10 reverb0.6 speed0.9 speed1.1; do sets+=(--set "$base $effect=$DATA/x-$base-$effect"); done
  done
  mkdir -p "$out"
  $VGS cross-voice "$run" "${sets[@]}" --out "$out/cross_voice.json" --markdown "$out/cross_voice.md"
}

case "${1:-all}" in
  data) data ;;
  testsets) testsets ;;
  train) train ;;
  finetune) finetune ;;
  eval) evaluate "${2:-$RUNS/f8k_ft}" "${3:-}" ;;
  all) data; testsets; train; finetune; evaluate "$RUNS/f8k_ft" ;;
  *) echo "usage: $0 data|testsets|train|finetune|eval [RUN [OUT]]|all" >&2; exit 2 ;;
esac
