#!/usr/bin/env bash
# Debian tools the tests use, installed when missing (make test runs this): Orthanc with
# its DICOMweb plugin (the PACS tests start and stop it on 127.0.0.1) and dicom3tools'
# dciodvfy (DICOM validation). Without apt-get or root, their tests skip with the reason.
set -uo pipefail
need=()
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if command -v apt-get >/dev/null; then
  echo "installing ${need[*]} for the PACS and DICOM tests"
  ($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    "${need[@]}" > /dev/null) || echo "warning: could not install ${need[*]}; their tests will skip"
else
  echo "warning: no apt-get; ${need[*]} missing, their tests will skip"
fi
exit 0
