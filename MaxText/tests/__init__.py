"""MaxText unit tests (CPU, tiny configs). Run: python3 -m pytest --pyargs MaxText.tests"""
