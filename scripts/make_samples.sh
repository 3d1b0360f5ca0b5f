#!/usr/bin/env bash
# Regenerates the bundled speech samples in pipecat_rxdrain/samples/.
# Synthesizer: espeak-ng (GPL-3.0; its output audio is not covered by the GPL),
# resampled with sox to what Twilio delivers: 8 kHz, mono, 16-bit PCM WAV.
# Each sample is one or more sentences ("segments") joined with silence, so a
# recognizer sees one final result per segment. Transcripts go to <name>.json.
# Needs: apt-get install espeak-ng sox
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/pipecat_rxdrain/samples"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

make_sample() { # name voice language gap_s lead_s tail_s sentence...
  local name=$1 voice=$2 lang=$3 gap=$4 lead=$5 tail=$6; shift 6
  local parts=() i=0 json_segments=""
  for s in "$@"; do
    espeak-ng -v "$voice" -s 150 -w "$tmp/$name.$i.raw.wav" "$s"
    sox "$tmp/$name.$i.raw.wav" -r 8000 -c 1 -b 16 "$tmp/$name.$i.wav" pad 0 "$gap"
    parts+=("$tmp/$name.$i.wav")
    json_segments+="$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$s"),"
    i=$((i+1))
  done
  sox "${parts[@]}" "$tmp/$name.joined.wav"
  sox "$tmp/$name.joined.wav" "$out/$name.wav" pad "$lead" "$tail"
  printf '{"file": "%s.wav", "language": "%s", "sample_rate": 8000, "segments": [%s]}\n' \
    "$name" "$lang" "${json_segments%,}" > "$out/$name.json"
}

make_sample hello_en en-us en-US 0.8 0.5 0.5 \
  "hello I would like to book an appointment" \
  "tomorrow morning at nine please"

make_sample call_en en-us en-US 1.2 0.6 1.0 \
  "hi this is a test call from the phone line" \
  "I am calling about my order number four two seven" \
  "it was supposed to arrive yesterday but it did not come" \
  "can you please tell me where it is now" \
  "thank you very much goodbye"

make_sample shalom_he he he-IL 0.8 0.5 0.5 \
  "שלום, אני רוצה לקבוע תור לרופא מחר בבוקר"

ls -l "$out"
