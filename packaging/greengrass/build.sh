#!/bin/sh
# Build the io.garrison.Agent Greengrass component: the wheel artifact and a recipe, laid out
# for `greengrass-cli deployment create --recipeDir OUT/recipes --artifactDir OUT/artifacts`
# (local deployment) or for upload to S3 and `aws greengrassv2 create-component-version`.
# Usage: packaging/greengrass/build.sh OUTDIR [S3_BUCKET]
set -eu
out=${1:?usage: build.sh OUTDIR [S3_BUCKET]}
bucket=${2:-BUCKET}
here=$(cd "$(dirname "$0")" && pwd)
component=io.garrison.Agent
wheel=$("$here/../build-wheel.sh" "$out/.wheel")
version=$(basename "$wheel" | sed -E 's/^garrison-([^-]+)-.*/\1/')
if ! grep -q "^ComponentVersion: \"$version\"$" "$here/recipe.yaml"; then
    echo "build.sh: recipe.yaml's ComponentVersion is not $version (the wheel's version); update it" >&2
    exit 1
fi
mkdir -p "$out/recipes" "$out/artifacts/$component/$version"
mv "$wheel" "$out/artifacts/$component/$version/"
rmdir "$out/.wheel"
sed "s#s3://BUCKET/#s3://$bucket/#" "$here/recipe.yaml" > "$out/recipes/$component-$version.yaml"
echo "$out/recipes/$component-$version.yaml"
echo "$out/artifacts/$component/$version/$(basename "$wheel")"
