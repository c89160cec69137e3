"""diffrecon"""
