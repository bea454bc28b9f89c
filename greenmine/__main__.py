from greenmine.cli import main

raise SystemExit(main())
