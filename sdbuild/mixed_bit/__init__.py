"""Mixed-bit palettization: which bit width each UNet layer can take, and layer plans from that.

Pre-analysis (`analysis`): palettize one layer (conv or linear weight) at a time to each bit
width and measure the PSNR of the UNet's output against the float16 model on fixed seeded inputs;
a finished analysis is a build-cache entry, an unfinished one resumes (`store`). A layer plan for
a target average bit width (`layer_plan`) then gives every layer the fewest bits that keep its
PSNR above one common threshold, the highest threshold whose average fits the target. Plans are
JSON {layer name: nbits} (16 = stays float16), applied by `quantization=mixed_bit` by layer name.

The analysis runs the PyTorch UNet, not the converted ML Program: swapping one weight in place
costs nothing while a converted program would be re-serialized per layer and bit width, it runs
anywhere, and it is exact where it matters: the palettes are the ones a build ships
(`sdbuild.palette.palettized`, same k-means, same seed, on the float16 weights). The
reference is the UNet with float16-rounded weights computed in float32, so the PSNR measures
weight error alone, not float16 activation rounding.

    sdbuild mixed-bit --architecture tiny-sd21-base --targets 3 4 --out-dir plans/
    sdbuild mixed-bit --path /models/sd21-base --targets 4.5 --latent-size 32
"""
