"""Data for minimind: the bundled fact corpus (`build`), streaming tokenisation of users'
own data into a content-keyed cache (`prepare`), and memory-bank loading (`knowledge`).

See docs/DATA.md for the formats and docs/ARCHITECTURE.md for the contract."""
