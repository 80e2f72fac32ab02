"""README and docs/*.md: every relative link resolves (file and #anchor), every repository path,
config and tool they name exists, and the README stays a front page (<= 300 lines).

Scans whatever docs/*.md exist, so pages added later are checked too."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
# Pages the README links that other branches of this round write (segmentation, GPU); a link to
# one of them may dangle until those branches are merged, a link to any other page may not.
PAGES_FROM_OTHER_BRANCHES = {'docs/segmentation.md', 'docs/gpu.md'}
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)')
CODE = re.compile(r'`([^`\n]+)`')
FENCE = re.compile(r'^```.*?^```', re.S | re.M)
REPO_PATH = re.compile(r'(?<![\w/.:-])((?:configs|tools|greenmim_mm|tests|requirements|docs|\.ci)'
                       r'/[\w./-]*)')
# detectron2's own tools, named in docs/detectron2.md as such
FOREIGN = {'tools/lazyconfig_train_net.py', 'tools/train_net.py'}
OUR_CONFIG = re.compile(r'^(greenmim|localmim|greenswin|greentwins|mask-rcnn_green|'
                        r'mask_rcnn_green|Base-Mask-RCNN-Green)[\w.-]*\.(py|yaml)$')


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r'[`*_]', lambda m: '_' if m.group() == '_' else '', heading.strip().lower())
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(page: Path) -> set:
    text = FENCE.sub('', page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r'^#+\s+(.*)$', text, re.M)}


def rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_readme_is_a_front_page():
    assert len((REPO / 'README.md').read_text().splitlines()) <= 300


def test_docs_pages_have_a_title_and_sections():
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith('# '), rel(page)
        assert any(line.startswith('## ') for line in lines), rel(page)


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(FENCE.sub('', page.read_text())):
        if re.match(r'[a-z]+:', target):
            continue  # http(s), mailto
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            if str(dest.relative_to(REPO)) not in PAGES_FROM_OTHER_BRANCHES:
                bad.append(target)
            continue
        if anchor and anchor not in anchors(dest):
            bad.append(target)
    assert not bad, f'{rel(page)}: broken links {bad}'


def named_paths(text: str):
    for span in CODE.findall(text) + FENCE.findall(text):
        for match in REPO_PATH.finditer(span):
            path = match.group(1).rstrip('.,:;)')
            pattern = span[match.end():match.end() + 1] in ('*', '{', '<')  # a glob, not a path
            if not pattern and '...' not in path and path not in FOREIGN:
                yield path
        for word in re.split(r'[\s=\'"(),]+', span):
            if OUR_CONFIG.match(word):
                yield word


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_named_paths_configs_and_tools_exist(page):
    names = {p.name for p in REPO.rglob('*') if '.git' not in p.parts}
    missing = []
    for path in set(named_paths(page.read_text())):
        if '/' in path:
            if not (REPO / path).exists():
                missing.append(path)
        elif path not in names:
            missing.append(path)
    assert not missing, f'{rel(page)} names what does not exist: {sorted(missing)}'


def test_every_tool_and_config_folder_is_documented():
    text = '\n'.join(page.read_text() for page in PAGES)
    for tool in (REPO / 'tools').glob('*.py'):
        if not tool.name.startswith('_'):
            assert f'tools/{tool.name}' in text, tool.name
    for config in (REPO / 'configs').rglob('*.py'):
        if '_base_' not in config.parts and config.parent.name != 'detectron2':
            assert config.name in text, config.name
