#!/usr/bin/env bash
# Run HERE (not on the device) before a device call: copies the training volumes into the
# git-ignored .devdata/, the B4 test data into .devb4/ (laid out as ../shared, the IXI
# training volumes as empty names so that the split still picks the last 6) and downloads
# the wheels the device machine lacks into .whl/ and .whlx/. Then call the device tool with
# carry [".devdata", ".whl"] and the command
#   bash benchmarks/device/train_priors.sh all      (or brain, or ct)
# or with carry [".devb4", ".whl"]: bash benchmarks/device/b4_gpu.sh
# or with carry [".whl", ".whlx"]: bash benchmarks/device/perf.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.whlx/' .git/info/exclude || echo '/.whlx/' >> .git/info/exclude
grep -qx '/.devdata/' .git/info/exclude || echo '/.devdata/' >> .git/info/exclude
grep -qx '/.devb4/' .git/info/exclude || echo '/.devb4/' >> .git/info/exclude
mkdir -p .devdata/ixi_t1 .devdata/ct .whl .whlx
ls ../shared/data/mri/ixi_t1/*.nii.gz | sort | head -n 26 | xargs -I{} cp {} .devdata/ixi_t1/
cp ../shared/data/ct/totalsegmentator/pulmonary_ct_cropped.nii.gz \
   ../shared/data/ct/totalsegmentator/aorta_ct_cropped.nii.gz .devdata/ct/
# the DICOM series as NIfTI, the LIDC chest at 2 mm slices (20 MB at 1 mm would not fit)
.venv/bin/python benchmarks/device/prepare_ct.py .devdata/ct
rm -rf .devb4 && mkdir -p .devb4/data/mri/ixi_t1 .devb4/data/ct/totalsegmentator
for f in $(ls ../shared/data/mri/ixi_t1/*.nii.gz | sort | head -n 26); do
  : > ".devb4/data/mri/ixi_t1/$(basename "$f")"
done
ls ../shared/data/mri/ixi_t1/*.nii.gz | sort | tail -n 6 | xargs -I{} cp {} .devb4/data/mri/ixi_t1/
cp ../shared/data/mri/b1_simulation_maps_16ch_128.npy .devb4/data/mri/
cp ../shared/data/ct/totalsegmentator/example_ct.nii.gz .devb4/data/ct/totalsegmentator/
dl() {  # dl FOLDER NAME==VERSION...
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
# .whl: what every device script needs (8 MB); .whlx: the speed benchmark's extras (30 MB),
# carried only by perf.sh, so that training's data fit beside the repository in 64 MiB
dl .whl monai==1.6.1 nibabel==5.4.2 pydantic==2.14.4 annotated-types typing-inspection \
   "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')"
dl .whlx sigpy==0.1.27 PyWavelets==1.9.0 astra-toolbox==2.5.0 \
   "nilearn==$(.venv/bin/python -c 'import nilearn; print(nilearn.__version__)')"
rm -f .whl/sigpy-* .whl/pywavelets-* .whl/astra_toolbox-*   # from an older layout
du -sh .devdata .devb4 .whl .whlx
