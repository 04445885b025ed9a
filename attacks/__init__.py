"""Model-inversion attacks and privacy metrics (filled by the attack-harness issue).

Given a target model, the private and public splits and an independent evaluation model, the
harness runs white-box inversion, the PCA-prior attack, GMI, KEDMI and PLG-MI and returns a
report: attack top-1/top-5, KNN feature distance, nearest-neighbour identity, PSNR/SSIM, the
sink-class share and per-sample exposure (DDCS). A cheap `probe` serves the RL environment.
"""
