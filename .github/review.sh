#!/usr/bin/env bash
# The design review of a pull request's .arch specs (run by action.yml; runs locally too):
#   - `archc check` and `archc lint` annotate the changed lines (GitHub workflow commands);
#   - for each spec the change adds or edits, `archc diff --format markdown` against the base
#     (the base's whole tree is extracted, so imports resolve as they did there);
#   - the step summary gets `archc check --format markdown` and the diffs; with GH_TOKEN and
#     PR_NUMBER set, the diffs are also posted as (or update) the pull request's comment.
# Environment: SPECS (a git pathspec, default '*.arch'), BASE (a commit, default origin/$GITHUB_BASE_REF),
# FAIL_ON_LINT (true: lint findings fail the job), ARCHC (the command, default archc).
set -euo pipefail

archc=(${ARCHC:-archc})
pathspec=${SPECS:-'*.arch'}
base=${BASE:-origin/${GITHUB_BASE_REF:-main}}
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mapfile -t specs < <(git ls-files -- "$pathspec")
if [ ${#specs[@]} -eq 0 ]; then
    echo "no specs match $pathspec"
    exit 0
fi
status=0
"${archc[@]}" check --format github "${specs[@]}" || status=1
if ! "${archc[@]}" lint --format github "${specs[@]}"; then
    [ "${FAIL_ON_LINT:-false}" = true ] && status=1
fi
"${archc[@]}" check --format markdown "${specs[@]}" >>"$summary" || true

comment="$work/comment.md"
echo "## archlang design review" >"$comment"
mkdir -p "$work/base"
git archive "$base" | tar -x -C "$work/base"
mapfile -t changed < <(git diff --name-only --diff-filter=AMR "$base"...HEAD -- "$pathspec")
if [ ${#changed[@]} -eq 0 ]; then
    echo "No spec changed." >>"$comment"
fi
for spec in "${changed[@]}"; do
    printf '\n### `%s`\n\n' "$spec" >>"$comment"
    if [ -f "$work/base/$spec" ]; then
        # exit 1 only says that the architectures differ
        "${archc[@]}" diff --format markdown "$work/base/$spec" "$spec" >>"$comment" || [ $? -eq 1 ] || status=1
    else
        echo "New spec." >>"$comment"
        "${archc[@]}" check --format markdown "$spec" >>"$comment" || true
    fi
done
cat "$comment" >>"$summary"
if [ -n "${GH_TOKEN:-}" ] && [ -n "${PR_NUMBER:-}" ]; then
    gh pr comment "$PR_NUMBER" --body-file "$comment" --edit-last 2>/dev/null \
        || gh pr comment "$PR_NUMBER" --body-file "$comment"
fi
exit $status
