#!/usr/bin/env bash
# Run HERE (not on the device) before a device call: copies the training volumes into the
# git-ignored .devdata/ and downloads the wheels the device machine lacks into .whl/.
# Then call the device tool with carry [".devdata", ".whl"] and the command
#   bash benchmarks/device/train_priors.sh brain      (or ct)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devdata/' .git/info/exclude || echo '/.devdata/' >> .git/info/exclude
mkdir -p .devdata/ixi_t1 .devdata/ct .whl
ls ../shared/data/mri/ixi_t1/*.nii.gz | sort | head -n 26 | xargs -I{} cp {} .devdata/ixi_t1/
cp ../shared/data/ct/totalsegmentator/pulmonary_ct_cropped.nii.gz \
   ../shared/data/ct/totalsegmentator/aorta_ct_cropped.nii.gz .devdata/ct/
.venv/bin/python benchmarks/device/prepare_ct.py .devdata/ct   # the DICOM series as NIfTI
dl() {
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$@"
}
dl monai==1.6.1 nibabel==5.4.2 pydantic==2.14.4 annotated-types typing-inspection \
   "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')"
du -sh .devdata .whl
