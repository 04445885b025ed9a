#!/bin/bash
# GMI on mlf0-r05-k5 seeds 1 and 2 once p12 (its PCA cells) has finished, so no cell is trained twice
while pgrep -f "defenses mlf0-r05-k5 --threads 1" > /dev/null && pgrep -f "seeds 0,1,2 --epochs 90 --defenses mlf0-r05-k5" > /dev/null; do sleep 15; done
cd /tmp/runs
for s in 1 2; do nohup ./q.sh /tmp/runs/bench-90 90 $s mlf0-r05-k5 --attacks pca,gmi --gan-steps 300 --gan-seconds 0 > pk-$s.log 2>&1 & done
wait
