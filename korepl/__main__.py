from korepl.cli import main

raise SystemExit(main())
